"""The launcher: run directory, resume, overrides, user errors, interruption."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main as launcher

ROOT = Path(__file__).resolve().parents[1]
TOY = "tests/configs/toy.yaml"


def run_main(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(launcher._RUN_TIMESTAMP_ENV, None)
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def only_run_dir(logdir: Path) -> Path:
    runs = [p for p in logdir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """One 3-step toy run shared by the tests that inspect or resume it."""
    logdir = tmp_path_factory.mktemp("logs")
    record = logdir / "start.json"
    proc = run_main("--base", TOY, "-t", "-l", str(logdir), f"model.params.record_start_to={record}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return only_run_dir(logdir), record


def test_training_writes_run_directory(trained_run):
    run, record = trained_run
    assert run.name.endswith("_toy")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3
    configs = sorted(p.name for p in (run / "configs").glob("*.yaml"))
    assert len(configs) == 2 and configs[0].endswith("-lightning.yaml") and configs[1].endswith("-project.yaml")
    assert list((run / "images" / "train").glob("inputs_gs-*.png")), "image logger wrote no PNG"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    # --scale_lr is on by default: lr = accumulate (1) x devices (1) x batch (4) x base_lr (1e-4)
    assert json.loads(record.read_text())["learning_rate"] == pytest.approx(4e-4)


def test_resume_from_run_directory_continues_with_optimizer_state(trained_run, tmp_path):
    run, _ = trained_run
    before = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    record = tmp_path / "resume.json"
    proc = run_main("-r", str(run), "-t", "lightning.trainer.max_steps=6",
                    f"model.params.record_start_to={record}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = json.loads(record.read_text())
    assert start["global_step"] == 3
    # Adam's per-parameter step counters came back from the checkpoint, not from zero
    saved_steps = [float(s["step"]) for s in before["optimizer_states"][0]["state"].values()]
    assert start["adam_steps"] == saved_steps == [3.0] * len(saved_steps)
    after = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert after["global_step"] == 6


def test_the_documented_resume_command_advances_training_and_the_bare_form_says_what_it_did(trained_run):
    """docs/training.md's resume line (``main.py -r logs/<run> -t``) trains on; ``-r`` alone (CompVis: test only)
    on a run without a test split does nothing, and says so instead of exiting 0."""
    run, _ = trained_run
    page = (ROOT / "docs" / "training.md").read_text()
    line = next(l for l in page.splitlines() if l.startswith("python main.py -r logs/<run> ") and "resume" in l)
    args = line.split("#")[0].split()[2:]
    args = [str(run) if a == "logs/<run>" else a for a in args]
    step = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    proc = run_main(*args, f"lightning.trainer.max_steps={step + 2}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert after == step + 2
    proc = run_main("-r", str(run))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: nothing to do: without -t main.py only tests the run, and the config has no data.params.test "
        "split; add -t to resume training")


def test_a_corrupt_or_code_carrying_checkpoint_is_refused_in_one_line(trained_run, tmp_path):
    run, _ = trained_run
    bad_run = tmp_path / "bad_run"
    (bad_run / "checkpoints").mkdir(parents=True)
    for config in (run / "configs").glob("*.yaml"):
        (bad_run / "configs").mkdir(exist_ok=True)
        (bad_run / "configs" / config.name).write_text(config.read_text())
    last = bad_run / "checkpoints" / "last.ckpt"
    data = (run / "checkpoints" / "last.ckpt").read_bytes()
    last.write_bytes(data[: len(data) // 2])  # truncated
    proc = run_main("-r", str(bad_run), "-t")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: checkpoint {str(last)!r} cannot be read as plain")

    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"state_dict": {}, "evil": Payload()}, last)
    proc = run_main("-r", str(bad_run), "-t")
    assert proc.returncode == 2 and "cannot be read as plain data" in proc.stderr
    assert not (tmp_path / "pwned").exists()


def test_dotlist_override_reaches_model(tmp_path):
    proc = run_main("--base", TOY, "-t", "-l", str(tmp_path), "model.params.hidden=5",
                    "lightning.trainer.max_steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"]["net.0.weight"].shape == (5, 4)
    saved = (run / "configs").glob("*-project.yaml")
    assert "hidden: 5" in next(saved).read_text()


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return str(path)


TOY_DATA = """
data:
  target: ldm.data.training.datamodule.DataModuleFromConfig
  params: {batch_size: 2, num_workers: 0, train: {target: tests.helpers.toy_model.ToyDataset}}
"""


@pytest.mark.parametrize("case, expected", [
    ("missing_file", "config file 'does/not/exist.yaml' does not exist"),
    ("no_target", "config node has no 'target' key"),
    ("bad_import", "target 'ldm.no_such_module.Model': module 'ldm.no_such_module' does not import"),
    ("bad_attribute", "module 'tests.helpers.toy_model' has no attribute 'NoSuchModel'"),
    ("bad_override", "override 'model.params.hiden' matches nothing"),
    ("bad_trainer_override", "override 'lightning.trainer.max_stepz' matches nothing"),
    ("bad_param", "takes no parameter 'widht'"),
])
def test_user_errors_exit_2_with_one_line(case, expected, tmp_path, capsys):
    args = ["-t", "-l", str(tmp_path)]
    if case == "missing_file":
        args += ["--base", "does/not/exist.yaml"]
    elif case == "no_target":
        args += ["--base", _write(tmp_path, "model:\n  params: {dim: 4}\n" + TOY_DATA)]
    elif case == "bad_import":
        args += ["--base", _write(tmp_path, "model:\n  target: ldm.no_such_module.Model\n" + TOY_DATA)]
    elif case == "bad_attribute":
        args += ["--base", _write(tmp_path, "model:\n  target: tests.helpers.toy_model.NoSuchModel\n" + TOY_DATA)]
    elif case == "bad_override":
        args += ["--base", TOY, "model.params.hiden=3"]
    elif case == "bad_trainer_override":
        args += ["--base", TOY, "lightning.trainer.max_stepz=3"]
    elif case == "bad_param":
        args += ["--base", _write(tmp_path, "model:\n  target: tests.helpers.toy_model.ToyRegressor\n"
                                            "  params: {widht: 3}\n" + TOY_DATA)]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        code = launcher.main(args)
    finally:
        os.chdir(cwd)
        os.environ.pop(launcher._RUN_TIMESTAMP_ENV, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not any(tmp_path.glob("*/checkpoints")), "a failed launch must not leave a run behind"


def test_sigterm_during_training_leaves_loadable_last_ckpt(tmp_path):
    record = tmp_path / "start.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop(launcher._RUN_TIMESTAMP_ENV, None)
    proc = subprocess.Popen(
        [sys.executable, "main.py", "--base", TOY, "-t", "-l", str(tmp_path / "logs"),
         "lightning.trainer.max_steps=100000", "lightning.trainer.limit_val_batches=0",
         "model.params.seconds_per_step=0.05", f"model.params.record_start_to={record}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while not record.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert record.exists(), proc.communicate()[1][-3000:]
    time.sleep(1.0)  # some steps
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-3000:]
    run = only_run_dir(tmp_path / "logs")
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] > 0 and "optimizer_states" in ckpt
    assert not list((run / "checkpoints").glob(".*tmp*")), "no temporary file may be left behind"


def test_exception_during_training_saves_checkpoint(tmp_path):
    proc = run_main("--base", TOY, "-t", "-l", str(tmp_path), "lightning.trainer.max_steps=10",
                    "lightning.trainer.limit_val_batches=0", "model.params.fail_at_step=2")
    assert proc.returncode != 0 and "toy failure for testing" in proc.stderr
    run = only_run_dir(tmp_path)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2


def test_non_finite_loss_stops_training_and_no_checkpoint_holds_nan(tmp_path):
    proc = run_main("--base", TOY, "-t", "-l", str(tmp_path), "lightning.trainer.max_steps=10",
                    "lightning.trainer.val_check_interval=1", "model.params.nan_at_step=3")
    assert proc.returncode == 1
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: training stopped: the loss is nan at global step 3"), last_line
    run = only_run_dir(tmp_path)
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt"))
    assert checkpoints and (run / "checkpoints" / "last.ckpt") in checkpoints
    for path in checkpoints:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["state_dict"].values()), path
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 3


def test_split_overrides_keeps_options_and_files():
    args, overrides = launcher.split_overrides(
        ["--base", "a.yaml", "b.yaml", "model.params.x=1", "-t", "lightning.trainer.max_steps=3", "-n", "run"])
    assert args == ["--base", "a.yaml", "b.yaml", "-t", "-n", "run"]
    assert overrides == ["model.params.x=1", "lightning.trainer.max_steps=3"]


@pytest.mark.parametrize("trainer, expected", [
    ({"accelerator": "cpu"}, 1), ({"accelerator": "cpu", "devices": 3}, 3),
    ({"accelerator": "gpu", "devices": "0,1"}, 2), ({"accelerator": "gpu", "devices": [0, 2, 3]}, 3),
])
def test_count_devices(trainer, expected):
    assert launcher.count_devices(trainer) == expected


def test_ddp_two_cpu_processes_share_one_run_directory(tmp_path):
    """DDP re-executes main.py per rank: all ranks must agree on the run directory and logging
    must not issue collectives from rank zero alone (that deadlocks or corrupts gloo)."""
    proc = run_main("--base", TOY, "-t", "-l", str(tmp_path), "lightning.trainer.strategy=ddp",
                    "lightning.trainer.devices=2", timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = only_run_dir(tmp_path)
    assert "8.00e-04 = 1 (accumulate_grad_batches) * 2 (devices x nodes)" in proc.stdout + proc.stderr
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 3


@pytest.mark.parametrize("window, expected", [
    ("reference_percentile", "window: the config asks for reference_percentile"),
    ("{name: lesion, adc_range: [700, 2500]}", "cannot hold the core threshold 620"),
    ("{name: lesion, dwi_headroom2: 3}", "window key 'dwi_headroom2' does not exist"),
])
def test_a_data_window_that_is_not_the_splits_exits_2_before_any_run_folder(window, expected, tmp_path, capsys):
    from ldm.data.preprocessing.pipeline import preprocess_cohort
    from ldm.data.synthetic.cohort import generate_patient, write_patient

    write_patient(generate_patient([4, 0], size=(32, 32), n_slices=3), tmp_path / "raw" / "P0")
    preprocess_cohort(tmp_path / "raw", tmp_path / "npy", size=(32, 32), progress=False)  # the lesion window
    logs = tmp_path / "logs"
    config = _write(tmp_path, "model:\n  target: tests.helpers.toy_model.ToyRegressor\n"
                              "data:\n  target: ldm.data.training.datamodule.DataModuleFromConfig\n"
                              "  params: {batch_size: 2, num_workers: 0, train: {target: ldm.data.training.datasets.MRISlices, "
                              f"params: {{data_root: {tmp_path / 'npy'}, window: {window}}}}}}}\n")
    try:
        code = launcher.main(["-t", "-l", str(logs), "--base", config])
    finally:
        os.environ.pop(launcher._RUN_TIMESTAMP_ENV, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not logs.exists(), "nothing half-written: no run folder"
