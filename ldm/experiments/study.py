"""The study (``make study``): does lesion-aware post-training beat its control, and by how much?

    make study                                          # CPU, the defaults below (about 57 minutes)
    STUDY_SEEDS=2 STUDY_SCALE=0.2 make study            # a quick run (underpowered: a check, not an answer)
    STUDY_SCALE=20 STUDY_ACCELERATOR=gpu make study     # a GPU, every stage 20x longer (not measured)

One synthetic cohort (``python -m ldm.data.synthetic``, ``scripts/preprocessing.sh``), then per training
seed s = 0, 1, ...: the VQGAN (configs/demo/vqgan.yaml), the cLDM (configs/demo/ldm.yaml) and,
from that cLDM's checkpoint with the same steps, data, augmentation and seed s, three stage-3 runs
(configs/demo/ldm_lapt.yaml): the control "cLDM (continued)" (lambda_image = lambda_lesion = 0),
cLDM-PT with the reference's image target (``reconstruction``) and with Eq. 6's (``input``). The
VQGAN's reconstruction of the test patients (the ceiling, scripts/reconstruct_VQGAN.py), every
model sampled (scripts/sample_LDM.py, DPM-Solver++ 20 steps, the project's setting for
experiments) and scored with ``scripts/evaluate.py --reconstruction ... --clinical``. These are the
commands of ``make demo``, run as stages of ``runner.py``: a study stopped and started again repeats
no stage it finished (per-stage records under ``<out>/records`` and ``<out>/seed_<s>/records``; an
interrupted training resumes from its ``last.ckpt``). ``study_report.py`` pools the seeds.

Knobs (environment; one line naming the knob and exit code 2 when out of range, before anything is
written): STUDY_SEEDS (2..20, default 3), STUDY_SCALE (multiplies every stage's training steps,
(0, 100], default 1), STUDY_OUT (default study_output), STUDY_ACCELERATOR (auto, cpu, gpu),
STUDY_N_TRAIN / STUDY_N_VAL / STUDY_N_TEST (patients, default 16 / 3 / 24), STUDY_SLICES (axial
slices per patient, default 32), STUDY_SAMPLER (dpmsolver++ or ddim), STUDY_SAMPLE_STEPS (default 20),
STUDY_COHORT_SEED (default 0), STUDY_BASELINES (Table 1 baselines trained per seed from the demo
configs, sampled and scored beside the latent models: any of pix2pix, cyclegan, pairedcyclegan,
bbdm, space separated; default none, see below). A folder holding another study (other steps,
cohort, sampler or baselines) is refused; more seeds extend a study in its folder.

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
differences that README's demo intervals imply (3 lesion patients, one seed per run; SD = interval
half-width / 1.96 x sqrt(3): 0.012 against a control of 0.087, ADC, seed 0, and 0.024 against
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
machine that is not quiet).
"""
from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ldm.experiments.runner import ExperimentError, Runner, Stage, check_folder, claim_folder, find_run_dir, script
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
SIZE = "64 64"
BATCH_SIZE = 32
CHECKPOINT = Path("checkpoints") / "last.ckpt"
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
    python: str = field(default=sys.executable, compare=False)

    @property
    def steps(self) -> dict[str, int]:
        return {k: max(1, round(v * self.scale)) for k, v in BASE_STEPS.items()}

    @property
    def baseline_steps(self) -> int:
        return max(1, round(BASELINE_STEPS * self.scale))

    def identity(self) -> dict:
        """What makes two studies the same experiment (the number of seeds does not: more extend it)."""
        keep = ("n_train", "n_val", "n_test", "slices", "sampler", "sample_steps", "cohort_seed")
        identity = {"steps": self.steps, **{k: v for k, v in asdict(self).items() if k in keep}, "window": WINDOW}
        if self.baselines:  # a study without baselines keeps the identity it had before they existed
            identity["baselines"] = {"runs": list(self.baselines), "steps": self.baseline_steps}
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
        if isinstance(kind, tuple):
            if text not in kind:
                raise ExperimentError(f"{knob}={text!r}: expected one of {', '.join(kind)}")
            values[name] = text
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
        if not math.isfinite(value) or value > high or (value <= low if kind is float else value < low):
            span = f"above {low:g} and at most {high:g}" if kind is float else f"from {low} to {high}"
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


@dataclass(frozen=True)
class Layout:
    """Where a study's files go."""

    out: Path

    @property
    def raw(self) -> Path:
        return self.out / "cohort" / "raw"

    @property
    def npy(self) -> Path:
        return self.out / "cohort" / "npy"

    def seed(self, seed: int) -> Path:
        return self.out / f"seed_{seed}"

    def evaluation(self, seed: int) -> Path:
        return self.seed(seed) / "evaluation"

    def samples(self, seed: int, name: str) -> Path:
        return self.seed(seed) / "samples" / name


def cohort_test_patients(layout: Layout) -> list[str]:
    """The test split's patients (once the cohort exists)."""
    test = layout.raw / "test"
    return sorted(p.name for p in test.iterdir() if p.is_dir()) if test.is_dir() else []


def lesion_patients(layout: Layout) -> list[str]:
    """The test patients the generator gave a lesion (its ``cohort.json``)."""
    path = layout.raw / "cohort.json"
    if not path.is_file():
        return []
    patients = json.loads(path.read_text()).get("patients", {}).get("test", {})
    return sorted(pid for pid, info in patients.items() if float(info.get("lesion_ml", 0)) > 0)


class Study:
    """The stages of one study, in order (module docstring)."""

    def __init__(self, settings: StudySettings, runner: Runner) -> None:
        self.s = settings
        self.runner = runner
        self.layout = Layout(settings.out)
        self.py = settings.python

    # -- the cohort ------------------------------------------------------------------------------
    def cohort(self) -> None:
        s, layout = self.s, self.layout
        self.runner.run(Stage(
            f"synthetic cohort ({s.n_train}/{s.n_val}/{s.n_test} patients, {s.slices} slices)",
            s.out / "records" / "cohort.json",
            {"n_train": s.n_train, "n_val": s.n_val, "n_test": s.n_test, "slices": s.slices, "seed": s.cohort_seed},
            command=[self.py, script("ldm/data/synthetic"), "--out", layout.raw, "--size", "demo", "--seed",
                     s.cohort_seed, "--slices", s.slices, "--n_train", s.n_train, "--n_val", s.n_val,
                     "--n_test", s.n_test],
            outputs=[layout.raw / "cohort.json"]))
        self.runner.run(Stage(
            "preprocessing", s.out / "records" / "preprocessing.json", {"size": SIZE, "window": WINDOW},
            command=["bash", script("scripts/preprocessing.sh")],
            env={"PYTHON": self.py, "RAW": str(layout.raw), "NPY": str(layout.npy), "SIZE": SIZE, "WINDOW": WINDOW},
            outputs=[layout.npy / split / "index.json" for split in ("train", "val", "test")]))

    # -- one seed --------------------------------------------------------------------------------
    def _accelerator(self) -> list[str]:
        return [f"lightning.trainer.accelerator={self.s.accelerator}"]

    def _device(self) -> list[str]:
        return {"cpu": ["--device", "cpu"], "gpu": ["--device", "cuda"]}.get(self.s.accelerator, [])

    def train(self, seed: int, name: str, config: str, steps: int, overrides: tuple[str, ...]) -> Path:
        """Train one run (or resume an interrupted one); its run directory."""
        logdir = self.layout.seed(seed) / "logs"
        record = self.layout.seed(seed) / "records" / f"train_{name}.json"
        npy = self.layout.npy
        stage_overrides = [f"data.params.train.params.data_root={npy / 'train'}",
                           f"data.params.validation.params.data_root={npy / 'val'}",
                           f"data.params.train.params.window={WINDOW}",
                           f"data.params.validation.params.window={WINDOW}",
                           *overrides, f"lightning.trainer.max_steps={steps}",
                           # validate 4 times per run, counted in training batches across epochs
                           f"lightning.trainer.val_check_interval={max(1, steps // 4)}",
                           "lightning.trainer.check_val_every_n_epoch=null"]
        existing = find_run_dir(logdir, name)
        resume = existing is not None and (existing / CHECKPOINT).is_file() and not record.is_file()
        if resume:  # a run directory reloads its own configs
            command = [self.py, script("main.py"), "-r", existing, "-t", *self._accelerator()]
        else:
            command = [self.py, script("main.py"), "--base", script(config), "-t", "-l", logdir, "-n", name,
                       "-s", seed, *stage_overrides, *self._accelerator()]

        def checkpoint() -> list[Path]:
            run = find_run_dir(logdir, name)
            return [(run if run is not None else logdir / f"*_{name}") / CHECKPOINT]

        self.runner.run(Stage(f"seed {seed}: {name} ({steps} steps{', resumed' if resume else ''})", record,
                              {"config": config, "seed": seed, "steps": steps, "overrides": stage_overrides},
                              command=command, outputs=checkpoint, verb="trained",
                              info={"accelerator": self.s.accelerator}))
        return find_run_dir(logdir, name) or logdir / f"<timestamp>_{name}"

    def _sample_outputs(self, folder: Path) -> list[Path]:
        patients = cohort_test_patients(self.layout)
        return [folder / pid / f"{m}_sample_0.nii.gz" for pid in patients for m in ("dwi", "adc")]

    def reconstruct(self, seed: int, vqgan_run: Path) -> Path:
        out, data = self.layout.samples(seed, RECONSTRUCTION), self.layout.npy / "test"
        self.runner.run(Stage(
            f"seed {seed}: VQGAN reconstruction of the test patients (the ceiling)",
            self.layout.seed(seed) / "records" / "reconstruct_vqgan.json", {"run_dir": vqgan_run, "data": data},
            command=[self.py, script("scripts/reconstruct_VQGAN.py"), "-r", vqgan_run, "--data", data, "--outdir", out,
                     *self._device()],
            outputs=self._sample_outputs(out)))
        return out

    def sample(self, seed: int, name: str, run_dir: Path) -> Path:
        s, out = self.s, self.layout.samples(seed, name)
        if name == "bbdm":  # a bridge takes only its own sampler
            sampler = "bridge"
        elif name in BASELINES:  # a GAN takes none: one forward pass per slice
            sampler = None
        else:
            sampler = s.sampler
        settings = {"run_dir": run_dir, "data": self.layout.npy / "test", "sampler": sampler, "steps": s.sample_steps,
                    "seed": seed}
        how = ["--sampler", sampler, "--steps", s.sample_steps, "--seed", seed] if sampler else []
        self.runner.run(Stage(
            f"seed {seed}: sampling {name} ({f'{sampler}, {s.sample_steps} steps' if sampler else 'one pass'})",
            self.layout.seed(seed) / "records" / f"sample_{name}.json", settings,
            command=[self.py, script("scripts/sample_LDM.py"), "-r", run_dir, "--data", self.layout.npy / "test",
                     "--outdir", out, *how, "--batch_size", BATCH_SIZE, *self._device()],
            verb="sampled", outputs=self._sample_outputs(out)))
        return out

    def evaluate(self, seed: int, predictions: dict[str, Path], reconstruction: Path) -> Path:
        out = self.layout.evaluation(seed)
        control = CONTROL[1]
        pairs = [f"{control}:{label}" for _, label, _ in TARGETS.values()] + [f"{CLDM[1]}:{control}"]
        self.runner.run(Stage(
            f"seed {seed}: evaluation (Table 1, lesion contrast, clinical read-out, paired statistics)",
            self.layout.seed(seed) / "records" / "evaluate.json",
            {"predictions": predictions, "reconstruction": reconstruction, "window": WINDOW, "pairs": pairs},
            command=[self.py, script("scripts/evaluate.py"), "--pred",
                     *[f"{label}={folder}" for label, folder in predictions.items()],
                     "--reconstruction", reconstruction, "--window", WINDOW, "--gt", self.layout.raw / "test",
                     "--out", out, "--n_panels", "0", "--clinical", "--pairs", *pairs],
            outputs=[out / name for name in EVALUATION_FILES]))
        return out

    def seed(self, seed: int) -> Path:
        """Every stage of one training seed; its evaluation folder."""
        steps = self.s.steps
        vqgan = self.train(seed, "vqgan", VQGAN_CONFIG, steps["vqgan"], ())
        cldm = self.train(seed, CLDM[0], LDM_CONFIG, steps["ldm"],
                          (f"model.params.first_stage_config.params.ckpt_path={vqgan / CHECKPOINT}",))
        reconstruction = self.reconstruct(seed, vqgan)
        runs = {CLDM[1]: (CLDM[0], cldm)}
        # only the image-space terms differ between the control and cLDM-PT: checkpoint, steps, seed are shared
        for name, label, overrides in (CONTROL, *TARGETS.values()):
            start = f"model.params.ckpt_path={cldm / CHECKPOINT}"
            run = self.train(seed, name, PT_CONFIG, steps["pt"], (start, *overrides))
            runs[label] = (name, run)
        for name in self.s.baselines:  # Table 1's other rows, from the demo configs
            label, config = BASELINES[name]
            overrides = (f"model.params.first_stage_config.params.ckpt_path={vqgan / CHECKPOINT}",) if name == "bbdm" else ()
            runs[label] = (name, self.train(seed, name, config, self.s.baseline_steps, overrides))
        predictions = {label: self.sample(seed, name, run) for label, (name, run) in runs.items()}
        return self.evaluate(seed, predictions, reconstruction)



def run_study(settings: StudySettings, dry_run: bool = False) -> Path | None:
    """Run (or resume) the study and write its report; the report's path (None in a dry run)."""
    from ldm.folder_lock import FolderBusy, folder_lock

    check_folder(settings.out, KIND, settings.identity())  # refused before anything is written
    runner = Runner("[study]", dry_run=dry_run)
    minutes = estimate_minutes(settings)
    steps = settings.steps
    extra = f", baselines {' '.join(settings.baselines)} {settings.baseline_steps}" if settings.baselines else ""
    runner.say(f"{settings.seeds} seeds x (VQGAN {steps['vqgan']}, cLDM {steps['ldm']}, 3 x stage 3 {steps['pt']}"
               f"{extra} steps); {settings.n_test} test patients, {settings.sampler} {settings.sample_steps} steps; planned "
               f"CPU time {minutes['total']:.1f} min on the project's 2 cores (training {minutes['training']:.0f}, "
               f"sampling {minutes['sampling']:.0f}, evaluation {minutes['evaluation']:.0f})")
    if dry_run:
        return _run_stages(settings, runner)
    try:
        with folder_lock(settings.out, "the study"):
            claim_folder(settings.out, KIND, settings.identity())
            return _run_stages(settings, runner)
    except FolderBusy as e:
        raise ExperimentError(str(e)) from e


def _run_stages(settings: StudySettings, runner: Runner) -> Path | None:
    from ldm.experiments.study_report import write_report

    study = Study(settings, runner)
    study.cohort()
    plan = power_plan(len(lesion_patients(study.layout)))
    if not runner.dry_run:
        verdict = "meets" if plan["planned_relative_mde"] <= TARGET_RELATIVE_MDE else "MISSES"
        runner.say(f"power plan: {plan['n_lesion_patients']} test lesion patients; at the planning SD "
                   f"({PLANNING_RELATIVE_SD:.0%} of the control's lesion MAE) the MDE is "
                   f"{plan['planned_relative_mde']:.1%} of it, which {verdict} the target of {TARGET_RELATIVE_MDE:.0%} "
                   f"({plan['patients_needed']} lesion patients needed)")
    evaluations = {seed: study.seed(seed) for seed in range(settings.seeds)}
    if runner.dry_run:
        return None
    seconds = _stage_seconds(study.layout, settings.seeds)
    return write_report(settings, evaluations, plan, seconds)


def _stage_seconds(layout: Layout, seeds: int) -> dict[str, float]:
    """Measured seconds per kind of stage (the records' names: cohort, preprocessing, train_*,
    reconstruct_*, sample_*, evaluate), summed over the records; a resumed stage counts its last part."""
    totals: dict[str, float] = {}
    for folder in (layout.out / "records", *(layout.seed(s) / "records" for s in range(seeds))):
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            kind = path.stem.split("_", 1)[0]
            totals[kind] = totals.get(kind, 0.0) + float(json.loads(path.read_text()).get("seconds", 0.0))
    return totals
