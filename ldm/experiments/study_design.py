"""The study's design: its arms, knobs, power plan and time budget (the stages are :mod:`.study`).

**Baselines** (docs/baselines.md). ``STUDY_BASELINES="pix2pix cyclegan pairedcyclegan bbdm"`` adds
the four other rows of the paper's Table 1 to every seed (each 1000 lightning steps x STUDY_SCALE: 500
batches for a GAN, whose two optimisers both count; BBDM from the seed's VQGAN, sampled with the
bridge sampler at STUDY_SAMPLE_STEPS; a GAN in one pass). They are off by default: with all four the
planned CPU time exceeds the 90 minutes of the default study (CycleGAN and PairedCycleGAN cost
several cLDM steps per batch), and they take no part in the primary outcome.

**Power.** The primary outcome is the lesion MAE (DWI and ADC), cLDM-PT minus control per patient
(each patient's mean over the seeds). The design must detect 10% of the control's lesion MAE at
80% power, two-sided alpha 0.05 (``statistics.py``: MDE = 2.802 sd_diff / sqrt(n)). Planning value
of sd_diff: 14% of the control's lesion MAE, the larger of the relative SDs of the per-patient
differences that an earlier demo's intervals implied (3 lesion patients, one seed per run; SD =
interval half-width / 1.96 x sqrt(3): 0.012 against a control of 0.087, ADC, seed 0, and 0.024 against
0.184, DWI with DPM-Solver++-20, seed 0); one seed's SD overstates that of a mean over seeds, so
the plan is conservative. Needed: ceil((2.802 x 0.14 / 0.10)^2) = 16 lesion patients.
The generator draws lesion volumes stratified per split with 25% of patients lesion-free (one
quantile per bin of 1/n, the first quarter lesion-free): 24 test patients give exactly 18 lesion
patients, a planned MDE of 2.802 x 0.14 / sqrt(18) = 9.2% of the control. The report gives the
MDE reached with the study's own sd_diff.

**Budget** at the defaults (3 seeds; 16 / 3 / 24 patients of 32 slices; VQGAN 800, cLDM 1000,
stage 3 200 steps), from rates measured on the project's 2-core CPU when quiet (VQGAN 800 steps
~5 min, cLDM 1000 ~4 min, a 200-step stage-3 run ~1.5 min, DPM-Solver++-20 sampling ~25 s per 300
slices, evaluation ~20 s per 10 patients x 5 runs; :func:`estimate_minutes`):
cohort and preprocessing ~0.5 min; training 3 x (5 + 4 + 3 x 1.5) = 40.5 min; sampling
3 seeds x 4 models x 768 slices x 25/300 s = 12.8 min; reconstructions ~0.3 min; evaluation 3 x 24
patients x 5 runs x 0.4 s = 2.4 min: about 57 minutes of the 90 allowed (the rest is margin for a
machine that is not quiet). A larger grid (STUDY_SIZE) multiplies training and sampling by its share of
the demo's pixels (128 x 128: 4x; the demo measured 3.8x for the VQGAN, 2.9x for the cLDM).
"""
from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ldm.data.synthetic.cohort import parse_size
from ldm.experiments.runner import ExperimentError
from ldm.experiments.statistics import minimum_detectable_effect, patients_needed

KIND = "study"
VQGAN_CONFIG, LDM_CONFIG, PT_CONFIG = "configs/demo/vqgan.yaml", "configs/demo/ldm.yaml", "configs/demo/ldm_lapt.yaml"
# steps per stage at STUDY_SCALE=1: those of the demo
BASE_STEPS = {"vqgan": 800, "ldm": 1000, "pt": 200}
BASELINE_STEPS = 1000  # lightning max_steps of each Table 1 baseline (a GAN: 500 batches)
# Table 1 baselines (STUDY_BASELINES): run name -> (label in the tables, demo config)
BASELINES = {"pix2pix": ("Pix2Pix", "configs/demo/pix2pix.yaml"),
             "cyclegan": ("CycleGAN", "configs/demo/cyclegan.yaml"),
             "pairedcyclegan": ("PairedCycleGAN", "configs/demo/paired_cyclegan.yaml"),
             "bbdm": ("BBDM", "configs/demo/bbdm.yaml")}
WINDOW = "lesion"
SIZE = "64x64"  # the demo's in-plane grid (STUDY_SIZE)
BATCH_SIZE = 32
# (run name, label in the tables, stage-3 overrides); the first stage-3 run is the control
CLDM = ("cldm", "cLDM")
CONTROL = ("cldm_continued", "cLDM (continued)", ("model.params.lambda_image=0", "model.params.lambda_lesion=0"))
TARGETS = {"reconstruction": ("cldm_pt", "cLDM-PT", ("model.params.image_target=reconstruction",)),
           "input": ("cldm_pt_input", "cLDM-PT (input target)", ("model.params.image_target=input",))}
RECONSTRUCTION = "vqgan"
# what evaluate.py writes that the report reads
EVALUATION_FILES = ("metrics_summary.csv", "metrics_per_patient.csv", "lesion_contrast.csv", "clinical_per_patient.csv")
# the design (see the module docstring)
TARGET_RELATIVE_MDE = 0.10
PLANNING_RELATIVE_SD = 0.14
# planning rates on the project's 2-core CPU (module docstring), per step, slice or patient-run
RATE_MINUTES = {"vqgan": 5 / 800, "ldm": 4 / 1000, "pt": 1.5 / 200}
# per lightning step of each baseline: docs/baselines.md's measured time per batch (a GAN's batch is two
# steps) x 1.76, the ratio of the cLDM's planning rate above to its measured time per batch (the
# planning rates include validation, checkpoints and start-up)
BASELINE_RATE_MINUTES = {"pix2pix": 1.3 / 1000, "cyclegan": 9.1 / 1000, "pairedcyclegan": 6.8 / 1000,
                         "bbdm": 4.9 / 1000}
DIRECT_SECONDS_PER_SLICE = 6 / 300  # a GAN's one forward pass per slice, writing included
SAMPLE_SECONDS_PER_SLICE = 25 / 300
EVAL_SECONDS_PER_PATIENT_RUN = 20 / 50
COHORT_MINUTES = 0.5
RECONSTRUCTION_MINUTES = 0.1


@dataclass(frozen=True)
class StudySettings:
    """The study's knobs (module docstring); ``python`` runs every stage."""

    seeds: int = 3
    scale: float = 1.0
    out: Path = Path("study_output")
    accelerator: str = "auto"
    n_train: int = 16
    n_val: int = 3
    n_test: int = 24
    slices: int = 32
    sampler: str = "dpmsolver++"
    sample_steps: int = 20
    cohort_seed: int = 0
    baselines: tuple[str, ...] = ()
    ldm_lesion_weight: float = 0.0  # the paper's L_latent (Eq. 4), as the study was measured; the demo uses 100
    clip_x0: bool = False           # the reference's sampler; the demo clips
    parameterization: str = "eps"   # what stages 2 and 3 predict: the paper's eps, as the study was measured
    conditioning: str = "bilinear"  # how the CTP reaches the latent grid: the paper's rescaler, as measured
    size: str = SIZE                # the in-plane grid HxW (multiples of 16); the demo's, as measured
    python: str = field(default=sys.executable, compare=False)

    @property
    def steps(self) -> dict[str, int]:
        return {k: max(1, round(v * self.scale)) for k, v in BASE_STEPS.items()}

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the in-plane grid."""
        h, w = self.size.split("x")
        return int(h), int(w)

    def size_overrides(self, kind: str) -> tuple[str, ...]:
        """The config keys that follow the grid (the demo configs say 64 x 64) for a ``kind`` of run:
        ``vqgan``, ``latent`` (a latent diffusion model: its latent grid at f = 4 and its first stage) or
        ``gan`` (a GAN baseline: the slices). None at the demo's grid, so that a study measured before
        STUDY_SIZE keeps its records."""
        if self.size == SIZE:
            return ()
        h, w = self.grid
        # the augmentation's shift is in pixels (the configs' 10.667 at 64, the reference's 32 at 192): the same
        # share of the slice at every grid
        shift = f"data.params.train.params.augment.max_translation=[{32 * h / 192:.3f},{32 * w / 192:.3f}]"
        return (shift, *{"vqgan": (f"model.params.ddconfig.resolution={h}",),
                         "gan": (f"model.params.image_size=[{h},{w}]",),
                         "latent": (f"model.params.image_size=[{h // 4},{w // 4}]",
                                    f"model.params.unet_config.params.image_size=[{h // 4},{w // 4}]",
                                    f"model.params.first_stage_config.params.ddconfig.resolution={h}")}[kind])

    @property
    def pixel_ratio(self) -> float:
        """Pixels per slice against the demo's grid: the planning rates scale with it."""
        h, w = self.grid
        return h * w / 64 / 64

    @property
    def baseline_steps(self) -> int:
        return max(1, round(BASELINE_STEPS * self.scale))

    def identity(self) -> dict:
        """What makes two studies the same experiment (the number of seeds does not: more extend it)."""
        keep = ("n_train", "n_val", "n_test", "slices", "sampler", "sample_steps", "cohort_seed")
        identity = {"steps": self.steps, **{k: v for k, v in asdict(self).items() if k in keep}, "window": WINDOW}
        if self.baselines:  # a study without baselines keeps the identity it had before they existed
            identity["baselines"] = {"runs": list(self.baselines), "steps": self.baseline_steps}
        if self.ldm_lesion_weight:  # likewise the settings that came later, at their defaults
            identity["ldm_lesion_weight"] = self.ldm_lesion_weight
        if self.clip_x0:
            identity["clip_x0"] = True
        if self.parameterization != "eps":
            identity["parameterization"] = self.parameterization
        if self.conditioning != "bilinear":
            identity["conditioning"] = self.conditioning
        if self.size != SIZE:
            identity["size"] = self.size
        return identity


# knob: (field, kind, low, high); kind int or float, or a tuple of the accepted words
KNOBS: dict[str, tuple[str, object, float | None, float | None]] = {
    "STUDY_SEEDS": ("seeds", int, 2, 20),
    "STUDY_SCALE": ("scale", float, 0.0, 100.0),
    "STUDY_OUT": ("out", Path, None, None),
    "STUDY_ACCELERATOR": ("accelerator", ("auto", "cpu", "gpu"), None, None),
    "STUDY_N_TRAIN": ("n_train", int, 2, 1000),
    "STUDY_N_VAL": ("n_val", int, 1, 1000),
    "STUDY_N_TEST": ("n_test", int, 2, 1000),
    "STUDY_SLICES": ("slices", int, 4, 256),
    "STUDY_SAMPLER": ("sampler", ("dpmsolver++", "ddim"), None, None),
    "STUDY_SAMPLE_STEPS": ("sample_steps", int, 1, 1000),
    "STUDY_COHORT_SEED": ("cohort_seed", int, 0, 2**31 - 1),
    "STUDY_BASELINES": ("baselines", "words", None, None),
    "STUDY_LDM_LESION_WEIGHT": ("ldm_lesion_weight", float, 0.0, 1000.0),
    "STUDY_CLIP_X0": ("clip_x0", ("0", "1"), None, None),
    "STUDY_PARAMETERIZATION": ("parameterization", ("eps", "x0", "v"), None, None),
    "STUDY_CONDITIONING": ("conditioning", ("bilinear", "pixel_unshuffle"), None, None),
    "STUDY_SIZE": ("size", "grid", None, None),
}


def settings_from_env(env: Mapping[str, str], python: str = sys.executable) -> StudySettings:
    """The knobs set in ``env`` (the rest at their defaults); a value out of range is an
    :class:`ExperimentError` naming the knob."""
    values: dict = {"python": python}
    for knob, (name, kind, low, high) in KNOBS.items():
        text = env.get(knob)
        if text is None or text == "":
            continue
        if kind == "words":  # STUDY_BASELINES: any of BASELINES, in their order, each once
            words = text.split()
            unknown = [w for w in words if w not in BASELINES]
            if unknown:
                raise ExperimentError(f"{knob}={text!r}: {unknown[0]!r} is not one of {', '.join(BASELINES)}")
            values[name] = tuple(b for b in BASELINES if b in words)
            continue
        if kind == "grid":  # STUDY_SIZE: the cohort's sizes, in multiples of 16 (f = 4, then the demo UNet's 4)
            try:
                h, w = parse_size(text)
            except ValueError:
                h = w = 0
            if min(h, w) < 32 or h % 16 or w % 16:
                raise ExperimentError(f"{knob}={text!r}: expected HxW, each a multiple of 16 and at least 32 "
                                      f"(e.g. 64x64, 128x128)")
            values[name] = f"{h}x{w}"
            continue
        if isinstance(kind, tuple):
            if text not in kind:
                raise ExperimentError(f"{knob}={text!r}: expected one of {', '.join(kind)}")
            values[name] = text == "1" if name == "clip_x0" else text
            continue
        if kind is Path:
            values[name] = Path(text)
            continue
        try:
            value = kind(text)
        except ValueError:
            expected = "a whole number" if kind is int else "a number"
            raise ExperimentError(f"{knob}={text!r}: expected {expected}") from None
        # the scale excludes 0 (no training); the other ranges include their ends
        open_below = name == "scale"
        if not math.isfinite(value) or value > high or (value <= low if open_below else value < low):
            span = f"above {low:g} and at most {high:g}" if open_below else f"from {low:g} to {high:g}"
            raise ExperimentError(f"{knob}={text!r}: must be {span}")
        values[name] = value
    return StudySettings(**values)


def estimate_minutes(s: StudySettings) -> dict[str, float]:
    """CPU minutes per part of the study from the planning rates (module docstring)."""
    steps = s.steps
    training = s.seeds * (steps["vqgan"] * RATE_MINUTES["vqgan"] + steps["ldm"] * RATE_MINUTES["ldm"]
                          + 3 * steps["pt"] * RATE_MINUTES["pt"])
    training += s.seeds * sum(s.baseline_steps * BASELINE_RATE_MINUTES[b] for b in s.baselines)
    models = 1 + 1 + len(TARGETS)  # cLDM, control, cLDM-PT per target
    sampling = s.seeds * models * s.n_test * s.slices * SAMPLE_SECONDS_PER_SLICE / 60
    for b in s.baselines:  # the bridge samples like the latent models, a GAN in one pass
        per_slice = SAMPLE_SECONDS_PER_SLICE if b == "bbdm" else DIRECT_SECONDS_PER_SLICE
        sampling += s.seeds * s.n_test * s.slices * per_slice / 60
    # the rates were measured at 64 x 64; a larger grid costs about its share of pixels (128 x 128: the
    # demo's VQGAN 3.8x, its cLDM 2.9x)
    training, sampling = training * s.pixel_ratio, sampling * s.pixel_ratio
    models += len(s.baselines)
    evaluation = s.seeds * s.n_test * (models + 1) * EVAL_SECONDS_PER_PATIENT_RUN / 60
    parts = {"cohort": COHORT_MINUTES, "training": training, "sampling": sampling,
             "reconstruction": s.seeds * RECONSTRUCTION_MINUTES, "evaluation": evaluation}
    return {**parts, "total": sum(parts.values())}


def power_plan(n_lesion: int) -> dict[str, float | int]:
    """The planned design: lesion patients needed, and the MDE (relative to the control's lesion MAE)
    that ``n_lesion`` patients give at the planning SD."""
    return {"n_lesion_patients": n_lesion, "planning_relative_sd": PLANNING_RELATIVE_SD,
            "target_relative_mde": TARGET_RELATIVE_MDE,
            "patients_needed": patients_needed(PLANNING_RELATIVE_SD, TARGET_RELATIVE_MDE),
            "planned_relative_mde": minimum_detectable_effect(PLANNING_RELATIVE_SD, n_lesion) if n_lesion else math.inf}
