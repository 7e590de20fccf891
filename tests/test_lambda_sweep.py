"""The lambda sweep (ldm/experiments/lambda_sweep*.py, scripts/lambda_sweep.py): the dry run lists the
paper's Table 2 grid as main.py runs, skips and resumes finished work, and the table is gathered
from evaluate.py's summary CSV; the command line passes its options on and errs in one line."""
import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from ldm.evaluation.tables import write_csv
from ldm.experiments import lambda_sweep_plan as plan
from ldm.experiments.lambda_sweep import SAMPLE_DONE, TRAIN_DONE, run_sweep
from ldm.experiments.lambda_sweep_report import write_tables
from tests.helpers.scripts import error_line, load_script

ROOT = Path(__file__).resolve().parents[1]
# Table 2 of the paper: the post-trained rows (the (0, 0) row is the stage-2 model)
TABLE2 = {(0.01, 0.0), (0.01, 0.01), (0.01, 0.02), (0.01, 0.05), (0.05, 0.0), (0.05, 0.1), (0.05, 0.2),
          (0.1, 0.0), (0.1, 0.1), (0.1, 0.2)}


sweep = load_script("lambda_sweep")


def _commands(out: str, script: str) -> list[list[str]]:
    return [shlex.split(line) for line in out.splitlines() if script in line and not line.startswith("[sweep]")]


def _override(cmd: list[str], key: str) -> str:
    return next(a.split("=", 1)[1] for a in cmd if a.startswith(key + "="))


def test_dry_run_lists_table2_grid_with_overrides(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc = sweep.main(["--dry-run", "--outdir", str(tmp_path), "--base", "configs/latent-diffusion/ldm_lapt.yaml",
                     "lightning.trainer.max_epochs=3", "--steps", "50", "data.params.batch_size=48"])
    out = capsys.readouterr().out
    assert rc == 0
    trains = _commands(out, "main.py")
    pairs = {(float(_override(c, "model.params.lambda_image")), float(_override(c, "model.params.lambda_lesion")))
             for c in trains}
    assert pairs == TABLE2 | {(0.0, 0.0)} and len(trains) == 11  # Table 2's runs and the control
    for cmd in trains:
        assert cmd[1:4] == ["main.py", "--base", "configs/latent-diffusion/ldm_lapt.yaml"] and "-t" in cmd
        assert "lightning.trainer.max_epochs=3" in cmd and "data.params.batch_size=48" in cmd
        name = cmd[cmd.index("-n") + 1]
        assert re.fullmatch(r"lapt_li[\d.]+_ll[\d.]+", name) or name == plan.CONTROL_NAME
    # the control differs from a post-training run in the two weights only: same config, seed, overrides
    control = next(c for c in trains if c[c.index("-n") + 1] == plan.CONTROL_NAME)
    other = next(c for c in trains if c[c.index("-n") + 1] == "lapt_li0.01_ll0.02")
    strip = lambda c: [a for a in c if not a.startswith(("model.params.lambda_", "lapt_li", plan.CONTROL_NAME))]  # noqa: E731
    assert strip(control) == strip(other)
    samples = _commands(out, "sample_LDM.py")
    assert len(samples) == 11 and all(c[c.index("--steps") + 1] == "50" for c in samples)
    evaluations = _commands(out, "evaluate.py")
    assert len(evaluations) == 12  # one per run, and the paired comparison of every run with the control
    paired = evaluations[-1]
    assert paired[paired.index("--pairs") + 1:] == [f"{plan.CONTROL_NAME}:{plan.run_name(li, ll)}"
                                                     for li, lls in plan.TABLE2_GRID.items() for ll in lls]
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_baseline_is_sampled_not_trained_and_finished_steps_are_skipped(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    stage2 = tmp_path / "stage2_run"
    (stage2 / "checkpoints").mkdir(parents=True)
    runs = tmp_path / "out" / "runs"
    done = runs / "2025-01-01T00-00-00_lapt_li0.01_ll0.02"
    (done / "checkpoints").mkdir(parents=True)
    (done / TRAIN_DONE).write_text("{}")
    half = runs / "2025-01-01T00-00-00_lapt_li0.05_ll0.1"
    (half / "checkpoints").mkdir(parents=True)
    (half / "checkpoints" / "last.ckpt").write_bytes(b"")
    scored = tmp_path / "out" / "eval" / "lapt_li0.01_ll0.02"
    scored.mkdir(parents=True)
    (scored / "metrics_summary.csv").write_text("run,modality\n")
    settings = plan.SweepSettings(outdir=tmp_path / "out", baseline=stage2,
                                  grid=plan.parse_grid("0.01:0.02;0.05:0.1,0.2"), control=False)
    assert run_sweep(settings, dry_run=True) is None
    out = capsys.readouterr().out
    trains = _commands(out, "main.py")
    assert len(trains) == 2  # 0.01/0.02 finished; 0.05/0.1 resumes; 0.05/0.2 starts
    assert trains[0][trains[0].index("-r") + 1] == str(half)
    assert "-n" in trains[1] and _override(trains[1], "model.params.lambda_lesion") == "0.2"
    samples = _commands(out, "sample_LDM.py")
    assert samples[0][samples[0].index("-r") + 1] == str(stage2)  # the (0, 0) row
    assert samples[1][samples[1].index("-r") + 1] == str(done)
    assert len(_commands(out, "evaluate.py")) == 3  # 0.01/0.02 was scored before; no control, no comparison
    assert "scoring finished before" in out


def test_grid_and_argument_errors(capsys):
    assert plan.parse_grid("0.01:0,0.02") == [(0.01, 0.0), (0.01, 0.02)]
    for bad in ("0.01", "0.01:x", "0.01:0.02;0.01:0.02", "0:0"):
        with pytest.raises(plan.SweepError):
            plan.parse_grid(bad)
    # the command line: one line naming the mistake, exit code 2
    for args, message in ((["--grid", "0:0", "--dry-run"], "control run"), (["--data", "x"], "--gt"),
                          (["--dry-run", "--base", "nope.yaml"], "nope.yaml"),
                          (["--dry-run", "--steps", "0"], "--steps must be at least 1"),
                          (["--dry-run", "a.b"], "unrecognised argument 'a.b'")):
        assert sweep.main(args) == 2, args
        assert message in error_line(capsys.readouterr().err, "lambda_sweep.py")


def _summary(path: Path, run: str, dwi_lesion: float, adc_lesion: float) -> None:
    rows = [{"run": run, "modality": m, "n_patients": 2, "n_slices": 10, "mae": 0.07 + i * 0.01,
             "psnr": 27.5, "ms_ssim_mean": 0.86, "ms_ssim_std": 0.01, "lesion_mae": v, "n_lesion_slices": 3,
             "fid": None}
            for i, (m, v) in enumerate((("dwi", dwi_lesion), ("adc", adc_lesion)))]
    write_csv(rows, path / "metrics_summary.csv")


def test_table2_gathered_from_evaluate_summaries(tmp_path):
    out = tmp_path / "sweep"
    settings = plan.SweepSettings(outdir=out)
    # the last run was not scored
    control = plan.SweepRun(0.0, 0.0, plan.CONTROL_NAME, control=True)
    runs = [control] + [plan.SweepRun(li, ll, plan.run_name(li, ll))
                        for li, ll in ((0.01, 0.02), (0.05, 0.1), (0.1, 0.2))]
    for run, (d, a) in zip(runs[:3], ((0.201, 0.104), (0.199, 0.105), (0.195, 0.093))):
        (out / "eval" / run.name).mkdir(parents=True)
        _summary(out / "eval" / run.name, run.name, d, a)
    paired = [{"run_a": control.name, "run_b": run.name, "modality": m, "metric": metric, "unit": "patient",
               "n": 2, "difference": -0.002, "ci_low": -0.004, "ci_high": 0.001, "p_value": 0.5}
              for run in runs[1:3] for m in ("dwi", "adc") for metric in ("mae", "lesion_mae")]
    write_csv(paired, out / "eval" / plan.VS_CONTROL / "paired_differences.csv")
    md_path, csv_path = write_tables(settings, runs)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["model"], r["lambda_image"], r["lambda_lesion"]) for r in rows] == [
        ("cLDM (continued)", "0", "0"), ("cLDM-PT", "0.01", "0.02"), ("cLDM-PT", "0.05", "0.1")]
    assert float(rows[2]["dwi_lesion_mae"]) == pytest.approx(0.195)
    assert rows[0]["dwi_fid"] == ""
    md = md_path.read_text()
    header = md.splitlines()[0]
    assert header.startswith("| Model | λ_image | λ_lesion | DWI MAE↓ | DWI Lesion MAE↓ | DWI PSNR↑ | DWI MS-SSIM↑")
    # the best lesion MAE in bold; MAE is the same in every row, so nothing is singled out there
    assert "| cLDM-PT | 0.05 | 0.1 | 0.070 | **0.195** |" in md and "| cLDM-PT | 0.01 | 0.02 | 0.070 | 0.199 |" in md
    assert "Against the control" in md
    assert "| lapt_li0.01_ll0.02 | -0.002 [-0.004, +0.001], p 0.5 |" in md


def test_the_sampler_is_passed_on_and_a_folder_sampled_otherwise_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = ["--dry-run", "--outdir", str(tmp_path), "--grid", "0.01:0.02", "--no-control", "--steps", "20"]
    assert sweep.main([*args, "--sampler", "dpmsolver++"]) == 0
    samples = _commands(capsys.readouterr().out, "sample_LDM.py")
    assert samples and all(c[c.index("--sampler") + 1] == "dpmsolver++" for c in samples)
    done = tmp_path / "samples" / plan.run_name(0.01, 0.02)
    done.mkdir(parents=True)
    (done / SAMPLE_DONE).write_text(json.dumps({"sampler": "ddim", "steps": 20}))
    (tmp_path / "runs" / "2025-01-01T00-00-00_lapt_li0.01_ll0.02").mkdir(parents=True)
    (tmp_path / "runs" / "2025-01-01T00-00-00_lapt_li0.01_ll0.02" / TRAIN_DONE).write_text("{}")
    assert sweep.main([*args, "--sampler", "ddim"]) == 0
    assert "sampling finished before" in capsys.readouterr().out
    assert sweep.main([*args, "--sampler", "dpmsolver++"]) == 2
    assert "sampled with ddim 20 steps, now dpmsolver++ 20" in error_line(capsys.readouterr().err, "lambda_sweep.py")
