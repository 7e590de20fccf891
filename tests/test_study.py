"""`make study` (scripts/study.py, ldm/experiments/study*.py) with its stages stubbed: the knobs and
their refusals, the design's arithmetic, resume after an interruption, a missing stage output, a
folder of another study, and the report on known scores; then the report on evaluate.py's own files."""
import json
import os
import re
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from ldm.data.synthetic.lesion import P_NO_LESION, stratified_quantiles
from ldm.experiments import study
from ldm.experiments.runner import EXPERIMENT_FILE, ExperimentError
from tests.helpers.scripts import error_line, load_script, read_csv

ROOT = Path(__file__).resolve().parents[1]
study_script = load_script("study")
TINY = {"STUDY_SEEDS": "2", "STUDY_N_TRAIN": "2", "STUDY_N_VAL": "1", "STUDY_N_TEST": "8", "STUDY_SLICES": "6",
        "STUDY_SCALE": "0.01", "STUDY_SAMPLE_STEPS": "2", "STUDY_ACCELERATOR": "cpu"}


def test_defaults_fit_the_budget_and_the_power_target():
    s = study.settings_from_env({})
    assert (s.seeds, s.scale, s.n_test, s.sampler, s.sample_steps) == (3, 1.0, 24, "dpmsolver++", 20)
    assert s.steps == {"vqgan": 800, "ldm": 1000, "pt": 200}
    minutes = study.estimate_minutes(s)
    assert minutes["total"] <= 90 and minutes["training"] == pytest.approx(40.5)
    # the generator's stratified strata: 24 test patients always hold exactly 18 with a lesion
    for seed in range(50):
        assert int((stratified_quantiles(np.random.default_rng(seed), 24) >= P_NO_LESION).sum()) == 18
    plan = study.power_plan(18)
    assert plan["patients_needed"] == 16 and plan["planned_relative_mde"] <= study.TARGET_RELATIVE_MDE
    assert study.power_plan(12)["planned_relative_mde"] > study.TARGET_RELATIVE_MDE
    quick = study.settings_from_env({"STUDY_SEEDS": "2", "STUDY_SCALE": "0.2"})
    assert quick.steps == {"vqgan": 160, "ldm": 200, "pt": 40}
    assert study.estimate_minutes(quick)["total"] < minutes["total"] / 2
    gpu = study.settings_from_env({"STUDY_SCALE": "20", "STUDY_ACCELERATOR": "gpu"})
    assert gpu.steps["pt"] == 4000 and gpu.identity() != s.identity() and s.identity()["steps"] == s.steps


@pytest.mark.parametrize("knob, value", [("STUDY_SEEDS", "1"), ("STUDY_SEEDS", "three"), ("STUDY_SEEDS", "21"),
                                         ("STUDY_SCALE", "0"), ("STUDY_SCALE", "-1"), ("STUDY_SCALE", "nan"),
                                         ("STUDY_SCALE", "101"), ("STUDY_ACCELERATOR", "tpu"), ("STUDY_N_TEST", "1"),
                                         ("STUDY_SAMPLER", "euler"), ("STUDY_LDM_LESION_WEIGHT", "-1"),
                                         ("STUDY_CLIP_X0", "yes"), ("STUDY_PARAMETERIZATION", "w"),
                                         ("STUDY_CONDITIONING", "nearest"), ("STUDY_SIZE", "100x100"),
                                         ("STUDY_SIZE", "128"), ("STUDY_SIZE", "16x64"), ("STUDY_SIZE", "-64x64")])
def test_a_knob_out_of_range_is_one_line_naming_it(knob, value, tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    monkeypatch.setenv("STUDY_OUT", str(out))
    monkeypatch.setenv(knob, value)
    assert study_script.main([]) == 2
    assert error_line(capsys.readouterr().err, "study.py").startswith(f"study.py: error: {knob}={value!r}")
    assert not out.exists()  # nothing written


def _fake_python(tmp_path: Path) -> str:
    path = tmp_path / "fake_python"
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{ROOT / "tests/helpers/fake_stages.py"}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _calls(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.is_file() else []


def _run(monkeypatch, out, python, **env):
    for key, value in {**TINY, "STUDY_OUT": str(out), **env}.items():
        monkeypatch.setenv(key, value)
    return study_script.main(["--python", python])


def test_resume_after_an_interruption_repeats_nothing_finished(tmp_path, monkeypatch, capsys):
    python, log, out = _fake_python(tmp_path), tmp_path / "calls.log", tmp_path / "study"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_FAIL", "-n cldm_pt_input -s 1")  # seed 1's last stage-3 run is interrupted
    assert _run(monkeypatch, out, python) == 2
    err = error_line(capsys.readouterr().err, "study.py")
    assert "seed 1: cldm_pt_input" in err and "exit code 3" in err
    first = _calls(log)
    assert sum("main.py" in c for c in first) == 10  # seed 0's five runs, seed 1's first four and the failed one
    assert not (out / "study.md").exists()

    monkeypatch.delenv("FAKE_FAIL")
    assert _run(monkeypatch, out, python) == 0
    second = _calls(log)[len(first):]
    # only what had not finished: the interrupted training (again), seed 1's sampling and evaluation
    assert [c.split()[0].split("/")[-1] for c in second] == ["main.py"] + ["sample_LDM.py"] * 4 + ["evaluate.py"]
    assert "-n cldm_pt_input -s 1" in second[0]
    records = json.loads((out / "seed_1" / "records" / "train_cldm_pt_input.json").read_text())
    assert records["steps"] == 2 and records["seed"] == 1 and records["accelerator"] == "cpu"
    assert "[study] seed 0: cldm (10 steps) finished before" in capsys.readouterr().out

    # a third start runs nothing and writes the same report
    report = (out / "study.md").read_text()
    assert _run(monkeypatch, out, python) == 0
    assert _calls(log) == first + second and (out / "study.md").read_text() == report

    # another seed extends the study: only its stages run
    assert _run(monkeypatch, out, python, STUDY_SEEDS="3") == 0
    third = _calls(log)[len(first) + len(second):]
    assert len(third) == 5 + 1 + 4 + 1 and all("seed_2" in c for c in third)
    assert "3 training seeds (0, 1, 2)" in (out / "study.md").read_text()


def test_the_report_finds_the_known_effect_and_not_the_null(tmp_path, monkeypatch, capsys):
    python, out = _fake_python(tmp_path), tmp_path / "study"
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    assert _run(monkeypatch, out, python) == 0
    capsys.readouterr()
    rows = read_csv(out / "study.csv")
    pooled = {(r["model"], r["modality"], r["metric"]): r for r in rows if r["table"] == "pooled_difference"}
    known = pooled[("cLDM-PT", "dwi", "lesion_mae")]  # 0.03 below the control by construction
    assert float(known["value"]) == pytest.approx(-0.03, abs=0.004) and float(known["ci_high"]) < 0
    assert (known["n_patients"], known["n_seeds"]) == ("6", "2")  # 8 test patients, a quarter lesion-free
    null = pooled[("cLDM-PT (input target)", "dwi", "lesion_mae")]
    assert float(null["ci_low"]) <= 0 <= float(null["ci_high"])
    assert float(known["mde"]) == pytest.approx(2.801585 * float(known["sd_patient_difference"]) / 6 ** 0.5, rel=1e-4)
    assert float(known["mde_relative"]) == pytest.approx(float(known["mde"]) / float(known["control"]), rel=1e-4)
    assert ("cLDM-PT", "", "dwi_lesion_ratio") in pooled and ("cLDM-PT", "", "abs_volume_error_ml") in pooled
    per_seed = [r for r in rows if r["table"] == "per_seed"]
    assert {(r["model"], r["seed"]) for r in per_seed} == {(m, s) for m in ("cLDM", "cLDM (continued)", "cLDM-PT",
                                                                             "cLDM-PT (input target)",
                                                                             "VQGAN reconstruction") for s in "01"}
    lesion_rows = {(r["model"], r["seed"]) for r in rows if r["table"] == "per_seed_lesion"}
    assert ("ground truth (training window)", "all") in lesion_rows and ("VQGAN reconstruction", "1") in lesion_rows
    md = (out / "study.md").read_text()
    assert "cLDM-PT − control, DWI lesion MAE: -0.030" in md and "better than the control" in md
    assert "cLDM-PT (input target) − control, DWI lesion MAE" in md and "no difference shown" in md
    assert "| VQGAN reconstruction (ceiling) | 0 |" in md and "| ground truth (training window) (ceiling) | all |" in md
    assert "MDE = (z_0.975 + z_0.8)" in md and "8 test patients" not in md
    assert (out / "study_differences.png").stat().st_size > 10_000


def test_a_missing_stage_output_and_another_studys_folder_are_refused(tmp_path, monkeypatch, capsys):
    python, out = _fake_python(tmp_path), tmp_path / "study"
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.log"))
    assert _run(monkeypatch, out, python) == 0
    capsys.readouterr()
    gone = next((out / "seed_1" / "samples" / "cldm_pt").glob("*/dwi_sample_0.nii.gz"))
    gone.unlink()
    assert _run(monkeypatch, out, python) == 2
    err = error_line(capsys.readouterr().err, "study.py")
    assert str(gone) in err and "sample_cldm_pt.json" in err
    # the same folder with other training steps is another study
    listing = sorted(p for p in out.rglob("*"))
    assert _run(monkeypatch, out, python, STUDY_SCALE="0.02") == 2
    err = error_line(capsys.readouterr().err, "study.py")
    assert str(out / EXPERIMENT_FILE) in err and "steps" in err
    assert sorted(p for p in out.rglob("*")) == listing  # nothing written
    # a lambda sweep's folder, and a folder of files that no study made
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / EXPERIMENT_FILE).write_text(json.dumps({"kind": "lambda sweep", "settings": {}}))
    assert _run(monkeypatch, sweep, python) == 2
    assert "lambda sweep" in error_line(capsys.readouterr().err, "study.py")
    other = tmp_path / "other"
    (other / "notes").mkdir(parents=True)
    assert _run(monkeypatch, other, python) == 2
    assert str(other) in error_line(capsys.readouterr().err, "study.py")
    assert sorted(os.listdir(other)) == ["notes"]


def test_a_missing_evaluation_file_is_named():
    with pytest.raises(ExperimentError, match="metrics_summary.csv is missing"):
        from ldm.experiments.study_report import SeedScores

        SeedScores.read(Path("/nonexistent/evaluation"))


def _write_volumes(folder: Path, dwi_lesion: float, adc_lesion: float, prediction: bool) -> None:
    """A patient of evaluate.py's layout: brain DWI 100 / ADC 800, its lesion as given."""
    from tests.helpers.evaluation_files import SHAPE, save

    brain = np.zeros(SHAPE, dtype=bool)
    brain[3:21, 4:24, 0:4] = True
    lesion = np.zeros(SHAPE, dtype=bool)
    if folder.name != "P003":  # P003 has no lesion
        lesion[6:10, 6:10, 1:3] = True
    dwi, adc = np.where(brain, 100.0, 0.0), np.where(brain, 800.0, 0.0)
    dwi[lesion], adc[lesion] = dwi_lesion, adc_lesion
    suffix = "_sample_0" if prediction else ""
    save(dwi, folder / f"dwi{suffix}.nii.gz")
    save(adc, folder / f"adc{suffix}.nii.gz")
    if not prediction:
        save(brain, folder / "mask.nii.gz")
        save(lesion, folder / "lesion.nii.gz")


def test_the_report_reads_evaluate_pys_own_files(tmp_path, capsys):
    """Two seeds scored by evaluate.py with the study's options: the report's pooled difference is
    the mean of the per-patient differences in metrics_per_patient.csv, the lesion rows its own."""
    from ldm.experiments.study_report import write_report

    evaluate_script = load_script("evaluate")
    gt = tmp_path / "gt"
    for pid in ("P001", "P002", "P003"):
        _write_volumes(gt / pid, 170.0, 500.0, prediction=False)
    # the lesion each model writes (DWI, ADC): cLDM-PT nearer the truth than the control
    lesions = {"cldm": (110.0, 750.0), "cldm_continued": (120.0, 720.0), "cldm_pt": (150.0, 600.0),
               "cldm_pt_input": (121.0, 715.0), "vqgan": (165.0, 520.0)}
    labels = {"cldm": "cLDM", "cldm_continued": "cLDM (continued)", "cldm_pt": "cLDM-PT",
              "cldm_pt_input": "cLDM-PT (input target)"}
    evaluations = {}
    for seed in (0, 1):
        for name, (dwi, adc) in lesions.items():
            for k, pid in enumerate(("P001", "P002", "P003")):
                _write_volumes(tmp_path / f"seed_{seed}" / name / pid, dwi + 3 * seed + k, adc - 5 * seed,
                               prediction=True)
        out = tmp_path / f"seed_{seed}" / "evaluation"
        argv = ["--pred", *[f"{label}={tmp_path / f'seed_{seed}' / name}" for name, label in labels.items()],
                "--reconstruction", str(tmp_path / f"seed_{seed}" / "vqgan"), "--gt", str(gt), "--out", str(out),
                "--n_panels", "0", "--clinical", "--slices", "brain", "--bootstrap", "200"]
        assert evaluate_script.main(argv) == 0
        evaluations[seed] = out
    capsys.readouterr()
    settings = study.StudySettings(seeds=2, out=tmp_path / "study")
    write_report(settings, evaluations, study.power_plan(2), {"train": 60.0}, n_boot=500)
    rows = read_csv(tmp_path / "study" / "study.csv")
    expected = []
    for out in evaluations.values():
        per_patient = {(r["run"], r["patient_id"]): r for r in read_csv(out / "metrics_per_patient.csv")
                       if r["modality"] == "dwi"}
        for pid in ("P001", "P002"):
            expected.append(float(per_patient[("cLDM-PT", pid)]["lesion_mae"])
                            - float(per_patient[("cLDM (continued)", pid)]["lesion_mae"]))
        assert per_patient[("cLDM-PT", "P003")]["lesion_mae"] == ""  # no lesion: left out
    pooled = {(r["model"], r["modality"], r["metric"]): r for r in rows if r["table"] == "pooled_difference"}
    dwi = pooled[("cLDM-PT", "dwi", "lesion_mae")]
    assert float(dwi["value"]) == pytest.approx(np.mean(expected), rel=1e-4) and float(dwi["value"]) < 0
    assert (dwi["n_patients"], dwi["n_seeds"]) == ("2", "2")
    ratio = pooled[("cLDM-PT", "", "dwi_lesion_ratio")]
    assert float(ratio["truth"]) == pytest.approx(1.7) and float(ratio["value"]) == pytest.approx(0.3, abs=0.02)
    lesion = {(r["model"], r["seed"], r["metric"]): float(r["value"]) for r in rows
              if r["table"] == "per_seed_lesion" and r["value"]}
    assert lesion[("ground truth", "all", "adc_lesion_mean")] == pytest.approx(500.0)
    assert lesion[("VQGAN reconstruction", "0", "lesion_core_share")] == pytest.approx(1.0)  # 520 < 620
    assert lesion[("cLDM (continued)", "1", "lesion_core_share")] == 0.0
    md = (tmp_path / "study" / "study.md").read_text()
    assert "| VQGAN reconstruction (ceiling) | 1 |" in md and "train 1.0" in md


def test_the_table1_baselines_join_every_seed_when_asked(tmp_path, monkeypatch, capsys):
    python, out, log = _fake_python(tmp_path), tmp_path / "study", tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    assert _run(monkeypatch, out, python, STUDY_SEEDS="2", STUDY_BASELINES="bbdm pix2pix") == 0
    calls = _calls(log)
    trained = [c for c in calls if "main.py" in c and ("-n pix2pix" in c or "-n bbdm" in c)]
    assert len(trained) == 4 and all("configs/demo/" in c for c in trained)
    assert all("first_stage_config.params.ckpt_path=" in c for c in trained if "-n bbdm" in c)
    sampled = {c.split("--outdir ")[1].split()[0].rsplit("/", 1)[-1]: c for c in calls if "sample_LDM.py" in c
               and "seed_0" in c}
    assert "--sampler" not in sampled["pix2pix"]  # a GAN: one forward pass, no sampler
    assert "--sampler bridge" in sampled["bbdm"] and "--sampler dpmsolver++" in sampled["cldm"]
    evaluation = next(c for c in calls if "evaluate.py" in c and "seed_1" in c)
    assert "Pix2Pix=" in evaluation and "BBDM=" in evaluation
    md = (out / "study.md").read_text()
    assert "| Pix2Pix | 1 |" in md and "| BBDM | 0 |" in md
    with_baselines = study.settings_from_env({"STUDY_BASELINES": "pix2pix cyclegan pairedcyclegan bbdm"})
    assert with_baselines.baselines == ("pix2pix", "cyclegan", "pairedcyclegan", "bbdm")
    assert study.estimate_minutes(with_baselines)["total"] > study.estimate_minutes(study.settings_from_env({}))["total"]
    # another set of baselines is another study
    monkeypatch.delenv("STUDY_BASELINES")
    assert _run(monkeypatch, out, python, STUDY_SEEDS="2") == 2
    assert "baselines" in error_line(capsys.readouterr().err, "study.py")
    capsys.readouterr()
    monkeypatch.setenv("STUDY_BASELINES", "unet")
    assert study_script.main(["--python", python]) == 2
    assert "STUDY_BASELINES='unet'" in error_line(capsys.readouterr().err, "study.py")


def test_the_lesion_weight_and_the_clip_reach_the_stages_and_make_another_study(tmp_path, monkeypatch, capsys):
    """The demo configs' lesion weight (20) is overridden by the study's own (0 by default: the study as
    measured); STUDY_LDM_LESION_WEIGHT and STUDY_CLIP_X0 reach every latent model's training / sampling."""
    python, out, log = _fake_python(tmp_path), tmp_path / "study", tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    assert study.settings_from_env({}).identity() == study.settings_from_env({"STUDY_CLIP_X0": "0"}).identity()
    assert "ldm_lesion_weight" not in study.settings_from_env({}).identity()
    assert _run(monkeypatch, out, python, STUDY_SEEDS="2") == 0
    latent = [c for c in _calls(log) if "main.py" in c and "-n vqgan" not in c]
    assert len(latent) == 8 and all("model.params.lesion_weight=0" in c for c in latent)
    assert all("model.params.parameterization=eps" in c and "model.params.cond_stage_config.params.method=bilinear" in c
               for c in latent)
    assert not any("--clip_x0" in c for c in _calls(log))
    # other settings are another study, refused in the same folder
    assert _run(monkeypatch, out, python, STUDY_SEEDS="2", STUDY_LDM_LESION_WEIGHT="20") == 2
    assert "ldm_lesion_weight" in error_line(capsys.readouterr().err, "study.py")
    other, log2 = tmp_path / "study2", tmp_path / "calls2.log"
    monkeypatch.setenv("FAKE_LOG", str(log2))
    assert _run(monkeypatch, other, python, STUDY_SEEDS="2", STUDY_LDM_LESION_WEIGHT="20", STUDY_CLIP_X0="1",
                STUDY_PARAMETERIZATION="v", STUDY_CONDITIONING="pixel_unshuffle") == 0
    calls = _calls(log2)
    latent = [c for c in calls if "main.py" in c and "-n vqgan" not in c]
    assert all("model.params.lesion_weight=20" in c and "model.params.parameterization=v" in c
               and "model.params.cond_stage_config.params.method=pixel_unshuffle" in c for c in latent)
    assert {"parameterization": "v", "conditioning": "pixel_unshuffle"}.items() <= study.settings_from_env(
        {"STUDY_PARAMETERIZATION": "v", "STUDY_CONDITIONING": "pixel_unshuffle"}).identity().items()
    sampled = [c for c in calls if "sample_LDM.py" in c]
    assert len(sampled) == 8 and all("--clip_x0" in c for c in sampled)


def test_the_grid_reaches_every_stage_and_makes_another_study(tmp_path, monkeypatch, capsys):
    """STUDY_SIZE: the cohort, preprocessing and every size key of the VQGAN, the latent models and the
    baselines; the demo's grid passes no size key (a study measured before STUDY_SIZE keeps its records)."""
    python, out, log = _fake_python(tmp_path), tmp_path / "study", tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    assert _run(monkeypatch, out, python, STUDY_SEEDS="2") == 0
    assert not any("image_size" in c or "resolution=" in c for c in _calls(log))
    assert "size" not in study.settings_from_env({"STUDY_SIZE": "64x64"}).identity()
    assert _run(monkeypatch, out, python, STUDY_SEEDS="2", STUDY_SIZE="128x128") == 2  # another study
    assert "size" in error_line(capsys.readouterr().err, "study.py")

    other, log2 = tmp_path / "study2", tmp_path / "calls2.log"
    monkeypatch.setenv("FAKE_LOG", str(log2))
    assert _run(monkeypatch, other, python, STUDY_SEEDS="2", STUDY_SIZE="128x96", STUDY_BASELINES="pix2pix bbdm") == 0
    calls = _calls(log2)
    assert any("ldm/data/synthetic" in c and "--size 128x96" in c for c in calls)
    assert json.loads((other / "records" / "preprocessing.json").read_text())["size"] == "128 96"
    trained = {re.search(r"-n (\S+) -s (\d)", c).groups(): c for c in calls if "main.py" in c}
    assert len(trained) == 2 * 7
    for (name, _), call in trained.items():
        assert "data.params.train.params.augment.max_translation=[21.333,16.000]" in call  # 32 px at 192
        if name == "vqgan":
            assert "model.params.ddconfig.resolution=128" in call and "image_size" not in call
        elif name == "pix2pix":
            assert "model.params.image_size=[128,96]" in call
        else:  # the latent models, BBDM included: the latent grid at f = 4 and the first stage's resolution
            assert "model.params.image_size=[32,24]" in call and "unet_config.params.image_size=[32,24]" in call
            assert "first_stage_config.params.ddconfig.resolution=128" in call
    small, large = (study.settings_from_env({"STUDY_SIZE": size}) for size in ("64x64", "128x128"))
    assert study.estimate_minutes(large)["training"] == pytest.approx(4 * study.estimate_minutes(small)["training"])
