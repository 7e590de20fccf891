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
The design (arms, knobs, power and budget) is :mod:`.study_design`.

Knobs (environment; one line naming the knob and exit code 2 when out of range, before anything is
written): STUDY_SEEDS (2..20, default 3), STUDY_SCALE (multiplies every stage's training steps,
(0, 100], default 1), STUDY_OUT (default study_output), STUDY_ACCELERATOR (auto, cpu, gpu),
STUDY_N_TRAIN / STUDY_N_VAL / STUDY_N_TEST (patients, default 16 / 3 / 24), STUDY_SLICES (axial
slices per patient, default 32), STUDY_SAMPLER (dpmsolver++ or ddim), STUDY_SAMPLE_STEPS (default 20),
STUDY_COHORT_SEED (default 0), STUDY_LDM_LESION_WEIGHT (the lesion-weighted L_latent of stages 2 and 3,
default 0: the paper's Eq. 4, as the study was measured; the demo's is 100), STUDY_CLIP_X0 (1: the latent
models' sampler clips x0_hat, as the demo; default 0), STUDY_PARAMETERIZATION (what stages 2 and 3 predict:
eps, the paper's and the default, x0 or v), STUDY_CONDITIONING (how the CTP reaches the latent grid: bilinear,
the paper's and the default, or pixel_unshuffle), STUDY_SIZE (the in-plane grid HxW, multiples of 16: 64x64, the
demo's and the default, 3.5 mm voxels and 14 mm latent pixels; 128x128 halves both and keeps the lesions under
1 ml, at 3 - 4x the CPU time: docs/results.md, The grid), STUDY_BASELINES (Table 1 baselines trained per seed from the demo
configs, sampled and scored beside the latent models: any of pix2pix, cyclegan, pairedcyclegan,
bbdm, space separated; default none, see :mod:`.study_design`). A folder holding another study
(other steps, cohort, sampler or baselines) is refused; more seeds extend a study in its folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ldm.experiments.runner import (LAST_CHECKPOINT, ExperimentError, Runner, Stage, check_folder, claim_folder,
                                    find_run_dir, resumable_run, script)
from ldm.experiments.statistics import patients_needed
# settings_from_env, estimate_minutes and power_plan are re-exported: scripts/study.py and the tests read them here
from ldm.experiments.study_design import (  # noqa: F401
    BASELINES, BATCH_SIZE, CLDM, CONTROL, EVALUATION_FILES, KIND, LDM_CONFIG, PLANNING_RELATIVE_SD, PT_CONFIG,
    RECONSTRUCTION, TARGET_RELATIVE_MDE, TARGETS, VQGAN_CONFIG, WINDOW, StudySettings, estimate_minutes,
    power_plan, settings_from_env)
from ldm.experiments.study_report import write_report


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
            command=[self.py, script("ldm/data/synthetic"), "--out", layout.raw, "--size", s.size, "--seed",
                     s.cohort_seed, "--slices", s.slices, "--n_train", s.n_train, "--n_val", s.n_val,
                     "--n_test", s.n_test],
            outputs=[layout.raw / "cohort.json"]))
        grid = " ".join(map(str, s.grid))
        self.runner.run(Stage(
            "preprocessing", s.out / "records" / "preprocessing.json", {"size": grid, "window": WINDOW},
            command=["bash", script("scripts/preprocessing.sh")],
            env={"PYTHON": self.py, "RAW": str(layout.raw), "NPY": str(layout.npy), "SIZE": grid, "WINDOW": WINDOW},
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
        existing = resumable_run(logdir, name)
        resume = existing is not None and not record.is_file()
        if resume:  # a run directory reloads its own configs
            command = [self.py, script("main.py"), "-r", existing, "-t", *self._accelerator()]
        else:
            command = [self.py, script("main.py"), "--base", script(config), "-t", "-l", logdir, "-n", name,
                       "-s", seed, *stage_overrides, *self._accelerator()]

        def checkpoint() -> list[Path]:
            run = find_run_dir(logdir, name)
            return [(run if run is not None else logdir / f"*_{name}") / LAST_CHECKPOINT]

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
        if s.clip_x0 and sampler in ("dpmsolver++", "ddim"):
            how.append("--clip_x0")
            settings["clip_x0"] = True
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
        vqgan = self.train(seed, "vqgan", VQGAN_CONFIG, steps["vqgan"], self.s.size_overrides("vqgan"))
        # the configs' lesion weight, parameterization and conditioning are the demo's: the study passes its own
        # (Eq. 4's eps prediction from the bilinear rescaler unless its knobs say otherwise), and its grid
        weight = (f"model.params.lesion_weight={self.s.ldm_lesion_weight:g}",
                  f"model.params.parameterization={self.s.parameterization}",
                  f"model.params.cond_stage_config.params.method={self.s.conditioning}",
                  *self.s.size_overrides("latent"))
        cldm = self.train(seed, CLDM[0], LDM_CONFIG, steps["ldm"],
                          (f"model.params.first_stage_config.params.ckpt_path={vqgan / LAST_CHECKPOINT}", *weight))
        reconstruction = self.reconstruct(seed, vqgan)
        runs = {CLDM[1]: (CLDM[0], cldm)}
        # only the image-space terms differ between the control and cLDM-PT: checkpoint, steps, seed are shared
        for name, label, overrides in (CONTROL, *TARGETS.values()):
            start = f"model.params.ckpt_path={cldm / LAST_CHECKPOINT}"
            run = self.train(seed, name, PT_CONFIG, steps["pt"], (start, *overrides, *weight))
            runs[label] = (name, run)
        for name in self.s.baselines:  # Table 1's other rows, from the demo configs
            label, config = BASELINES[name]
            overrides = (f"model.params.first_stage_config.params.ckpt_path={vqgan / LAST_CHECKPOINT}",
                         *self.s.size_overrides("latent")) if name == "bbdm" else self.s.size_overrides("gan")
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
