"""scripts/sample_LDM.py end to end with a tiny, untrained LatentDiffusion saved as a run directory:
source geometry, CTP-only patients, batch-size independence with DDIM eta = 0, EMA weights,
resuming, and one-line errors."""
import signal
import socket
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ldm.data.preprocessing.pipeline import preprocess_cohort
from ldm.modules.ema import EMA_PREFIX
from tests.helpers.lock_holder import hold
from tests.helpers.raw_patients import AFFINE, SIZE, SOURCE_SHAPE, write_raw_patient
from tests.helpers.sampling_runs import build_model, save_run, tiny_config
from tests.helpers.scripts import error_line as script_error_line
from tests.helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


sample_script = load_script("sample_LDM")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_run")
    raw = root / "raw"
    write_raw_patient(raw / "P001", 1)
    write_raw_patient(raw / "P003", 3, ctp_only=True)
    npy = root / "npy"  # a "training split" of the run: gives the cohort reference
    write_raw_patient(root / "raw_train" / "P010", 10)
    preprocess_cohort(root / "raw_train", npy, size=SIZE, progress=False)
    config = tiny_config(npy)
    torch.manual_seed(0)
    model = build_model(config)
    state = model.state_dict()
    g = torch.Generator().manual_seed(1)
    for key in state:  # EMA weights that differ from the raw ones, so that using them shows
        if key.startswith(EMA_PREFIX) and state[key].is_floating_point() and state[key].dim() > 0:
            state[key] = state[key] + 0.05 * torch.randn(state[key].shape, generator=g)
    run = save_run(root / "logs" / "2025-01-01T00-00-00_tiny", config, state)
    return root, raw, npy, run, model, state, config


def error_line(stderr: str) -> str:
    return script_error_line(stderr, "sample_LDM.py")


def sample(run, raw, out, *extra):
    return sample_script.main(["-r", str(run), "--data", str(raw), "--outdir", str(out), "--steps", "3",
                               "--seed", "1", "--device", "cpu", "--no_progress", *extra])


def volumes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): np.asarray(nib.load(str(p)).dataobj)
            for p in sorted(folder.rglob("*.nii.gz"))}


def test_raw_cohort_to_source_space_independent_of_batch_size(setup, tmp_path, capsys, monkeypatch):
    root, raw, npy, run, *_ = setup
    scratch = tmp_path / "scratch"  # where the on-the-fly preprocessing goes
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    assert sample(run, raw, tmp_path / "b1", "--batch_size", "1", "--size", *map(str, SIZE)) == 0
    out = capsys.readouterr().out
    assert "EMA" in out and "1 CTP-only patient(s)" in out and str(npy) in out
    assert sample(run, raw, tmp_path / "b3", "--batch_size", "3", "--n_samples", "2") == 0  # size from config
    one, three = volumes(tmp_path / "b1"), volumes(tmp_path / "b3")
    assert sorted(one) == [f"{p}/{m}_sample_0.nii.gz" for p in ("P001", "P003") for m in ("adc", "dwi")]
    for name, data in one.items():
        np.testing.assert_allclose(three[name], data, rtol=1e-5, atol=1e-5 * np.abs(data).max())
        img = nib.load(str(tmp_path / "b1" / name))
        assert img.shape == SOURCE_SHAPE
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
        mask = np.asarray(nib.load(str(raw / name.split("/")[0] / "mask.nii.gz")).dataobj) > 0
        assert (data[~mask] == 0).all() and np.abs(data[mask]).max() > 0
    assert not np.array_equal(three["P001/dwi_sample_0.nii.gz"], three["P001/dwi_sample_1.nii.gz"])
    assert list(scratch.iterdir()) == []  # the temporary preprocessing is gone


def test_eta_above_zero_does_not_depend_on_the_batch_size(setup, tmp_path):
    root, raw, npy, run, *_ = setup
    for name, batch in (("a", "4"), ("b", "1")):
        assert sample(run, raw, tmp_path / name, "--batch_size", batch, "--eta", "1.0", "--patients", "P001") == 0
    assert sample(run, raw, tmp_path / "eta0", "--batch_size", "4", "--patients", "P001") == 0
    a, b, eta0 = volumes(tmp_path / "a"), volumes(tmp_path / "b"), volumes(tmp_path / "eta0")
    assert sorted(a) == ["P001/adc_sample_0.nii.gz", "P001/dwi_sample_0.nii.gz"]
    for name in a:  # the per-step noise is drawn per slice, as x_T is
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5 * np.abs(a[name]).max())
    assert not np.allclose(a["P001/dwi_sample_0.nii.gz"], eta0["P001/dwi_sample_0.nii.gz"])


def test_dpm_solver_samples_independent_of_the_batch_size_and_is_not_mixed_with_ddim(setup, tmp_path, capsys):
    root, raw, npy, run, *_ = setup
    assert sample(run, raw, tmp_path / "d1", "--sampler", "dpmsolver++", "--batch_size", "1", "--patients", "P001") == 0
    assert "dpmsolver++ with 3 steps" in capsys.readouterr().out
    assert sample(run, raw, tmp_path / "d4", "--sampler", "dpmsolver++", "--batch_size", "4", "--patients", "P001") == 0
    assert sample(run, raw, tmp_path / "ddim", "--batch_size", "4", "--patients", "P001") == 0
    d1, d4, ddim = volumes(tmp_path / "d1"), volumes(tmp_path / "d4"), volumes(tmp_path / "ddim")
    for name in d1:
        np.testing.assert_allclose(d4[name], d1[name], rtol=1e-5, atol=1e-5 * np.abs(d1[name]).max())
    assert not np.allclose(d1["P001/dwi_sample_0.nii.gz"], ddim["P001/dwi_sample_0.nii.gz"])
    capsys.readouterr()
    assert sample(run, raw, tmp_path / "d1", "--batch_size", "1", "--patients", "P001") == 2  # DDIM into it
    err = error_line(capsys.readouterr().err)
    assert "sampler='dpmsolver++'" in err and "another --outdir" in err
    assert sample(run, raw, tmp_path / "eta", "--sampler", "dpmsolver++", "--eta", "0.5") == 2
    err = error_line(capsys.readouterr().err)
    assert "--sampler dpmsolver++" in err and "deterministic" in err
    assert not (tmp_path / "eta").exists()


def test_the_default_output_folder_names_the_sampler(setup, tmp_path):
    import shutil

    root, raw, npy, run, *_ = setup
    copy = tmp_path / "logs" / run.name
    shutil.copytree(run, copy)
    assert sample_script.main(["-r", str(copy), "--data", str(raw), "--steps", "2", "--device", "cpu",
                               "--no_progress", "--patients", "P001", "--sampler", "dpmsolver++"]) == 0
    assert sample_script.main(["-r", str(copy), "--data", str(raw), "--steps", "2", "--device", "cpu",
                               "--no_progress", "--patients", "P001"]) == 0
    assert sorted(p.name for p in (copy / "samples").iterdir()) == ["2", "dpmsolver++_2"]


def test_ema_weights_are_used_when_the_checkpoint_has_them(setup, tmp_path):
    root, raw, npy, run, model, state, config = setup
    # the same network with the EMA values as its raw weights and no EMA in the checkpoint
    swapped = {k: v for k, v in state.items() if not k.startswith(EMA_PREFIX)}
    for name, _ in model.model.named_parameters():
        swapped["model." + name] = state[EMA_PREFIX + name.replace(".", "")]
    no_ema = save_run(tmp_path / "no_ema_run", config, swapped)
    assert sample(run, raw, tmp_path / "ema", "--batch_size", "4") == 0
    assert sample(no_ema, raw, tmp_path / "swapped", "--batch_size", "4") == 0
    raw_only = {k: v for k, v in state.items() if not k.startswith(EMA_PREFIX)}
    plain = save_run(tmp_path / "plain_run", config, raw_only)
    assert sample(plain, raw, tmp_path / "plain", "--batch_size", "4") == 0
    ema, swapped_out, plain_out = volumes(tmp_path / "ema"), volumes(tmp_path / "swapped"), volumes(tmp_path / "plain")
    for name in ema:
        np.testing.assert_allclose(ema[name], swapped_out[name], rtol=1e-5, atol=1e-4)
    assert any(not np.allclose(ema[n], plain_out[n], atol=1e-3) for n in ema)


def test_second_run_skips_and_other_settings_are_refused(setup, tmp_path, capsys):
    root, raw, npy, run, *_ = setup
    out = tmp_path / "out"
    assert sample(run, raw, out, "--batch_size", "8") == 0
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    capsys.readouterr()
    assert sample(run, raw, out, "--batch_size", "2") == 0  # batch size does not change eta-0 results
    assert "skipped 2 patient(s) already sampled: P001, P003" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamps
    rc = sample_script.main(["-r", str(run), "--data", str(raw), "--outdir", str(out), "--steps", "4",
                             "--device", "cpu", "--no_progress"])
    err = error_line(capsys.readouterr().err)
    assert rc == 2 and "steps=3" in err and "another --outdir" in err


def test_a_folder_that_a_live_run_writes_is_refused_and_a_killed_runs_lock_taken_over(setup, tmp_path, capsys):
    root, raw, npy, run, *_ = setup
    out = tmp_path / "busy"
    child = hold(out, "sampling")  # another process, as a second sample_LDM.py would be
    try:
        assert sample(run, npy, out) == 2
        line = error_line(capsys.readouterr().err)
        assert f"output folder {str(out)!r} is being written by sampling (pid {child.pid} on {socket.gethostname()}" \
            in line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of ours in it
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert sample(run, npy, out) == 0
    assert f"took over the lock of {str(out)!r} left by sampling (pid {child.pid}" in capsys.readouterr().out
    assert (out / "P010" / "adc_sample_0.nii.gz").is_file() and not (out / ".lock").exists()


def test_user_errors_are_one_line(setup, tmp_path, capsys):
    root, raw, npy, run, model, state, config = setup
    broken = {k: v for k, v in state.items() if k != "cond_stage_model.channel_mapper.weight"}
    bad_run = save_run(tmp_path / "bad_run", config, broken)
    corrupt_run = save_run(tmp_path / "corrupt_run", config, state)
    ckpt = corrupt_run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    cases = [
        (["-r", str(tmp_path / "nope")], "does not exist"),
        (["-r", str(bad_run)], "missing key(s), e.g. 'cond_stage_model.channel_mapper.weight'"),
        (["-r", str(run), "model.params.no_such_key=1"], "no_such_key"),
        (["-r", str(run), "--patients", "P999"], "P999"),
        (["-r", str(run), "--reference", str(tmp_path)], "reference.json"),
        (["-r", str(run), "--size", "64", "64"], "holds 64x64 slices but the model takes 32x32"),
        (["-r", str(run), "--steps", "21"], "--steps 21"),
        (["-r", str(corrupt_run)], "cannot be read as plain data"),
        (["-r", str(run), "--size", "0", "32"], "--size must be two positive numbers"),
        (["-r", str(run), "--patients", "P003", f"data.params.train.params.data_root={tmp_path}"],
         "CTP-only patient(s) (e.g. P003) need a DWI/ADC intensity scale"),
    ]
    for args, message in cases:
        rc = sample_script.main(["--steps", "2"] + args + ["--data", str(raw), "--outdir", str(tmp_path / "o"),
                                                           "--device", "cpu", "--no_progress"])
        assert rc == 2 and message in error_line(capsys.readouterr().err), args
    (tmp_path / "afile").write_text("x")
    no_index = tmp_path / "no_index"
    (no_index / "P001").mkdir(parents=True)
    for data, outdir, message in ((raw, tmp_path / "afile" / "out", "is a file, not a folder"),
                                  (no_index, tmp_path / "o", "neither a preprocessed split")):
        rc = sample_script.main(["-r", str(run), "--data", str(data), "--outdir", str(outdir), "--steps", "2",
                                 "--device", "cpu", "--no_progress"])
        assert rc == 2 and message in error_line(capsys.readouterr().err)


def test_a_rejected_raw_patient_is_an_error_unless_skip_bad(setup, tmp_path, capsys):
    root, raw, npy, run, *_ = setup
    cohort = tmp_path / "raw"
    for pid in ("P001", "P003"):
        (cohort / pid).mkdir(parents=True)
        for f in (raw / pid).iterdir():
            (cohort / pid / f.name).symlink_to(f)
    (cohort / "P009").mkdir()
    (cohort / "P009" / "ctp.nii.gz").write_bytes(b"not a nifti")
    rc = sample(run, cohort, tmp_path / "out")
    assert rc == 2 and "patient P009: ctp.nii.gz cannot be read" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()
    assert sample(run, cohort, tmp_path / "out", "--skip-bad") == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["P001", "P003"]


def test_sigterm_removes_the_temporary_preprocessing(setup, tmp_path):
    import os
    import signal
    import subprocess
    import time

    root, raw, npy, run, *_ = setup
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "sample_LDM.py"), "-r", str(run), "--data",
                             str(raw), "--outdir", str(tmp_path / "out"), "--steps", "20", "--n_samples", "50",
                             "--device", "cpu", "--no_progress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(scratch.iterdir()):
        time.sleep(0.2)
    assert any(scratch.iterdir()), "the raw cohort was never preprocessed"
    time.sleep(3)  # into sampling
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert list(scratch.iterdir()) == []
    assert not [p for p in (tmp_path / "out").rglob("*") if ".tmp" in p.name]


def test_bf16_sampling_is_close_to_float32_and_is_not_mixed_with_it(setup, tmp_path, capsys):
    root, raw, npy, run, *_ = setup
    assert sample(run, raw, tmp_path / "fp32", "--batch_size", "4", "--patients", "P001") == 0
    assert sample(run, raw, tmp_path / "bf16", "--batch_size", "4", "--patients", "P001",
                  "--precision", "bf16-mixed") == 0
    assert "precision bf16-mixed" in capsys.readouterr().out
    fp32, bf16 = volumes(tmp_path / "fp32"), volumes(tmp_path / "bf16")
    assert sorted(bf16) == sorted(fp32)
    for name, data in fp32.items():
        scale = np.abs(data).max()
        error = np.abs(bf16[name].astype(np.float64) - data) / scale
        assert 0 < error.max() < 0.1 and error.mean() < 0.01, name  # bf16 ran, and stayed close
    # a float32 run does not resume into a bf16 folder
    assert sample(run, raw, tmp_path / "bf16", "--batch_size", "4", "--patients", "P001") == 2
    assert "precision='bf16-mixed'" in error_line(capsys.readouterr().err)


def test_summary_maps_feed_the_clinical_read_out_and_k_below_two_is_refused(setup, tmp_path, capsys):
    from tests.test_evaluate import evaluate_script, read_csv

    root, raw, npy, run, *_ = setup
    out = tmp_path / "out"
    assert sample(run, raw, out, "--batch_size", "8", "--patients", "P001", "--n_samples", "2", "--summary") == 0
    assert "summary: {dwi,adc}_{mean,std}.nii.gz over 2 samples" in capsys.readouterr().out
    for name in ("dwi_mean", "dwi_std", "adc_mean", "adc_std"):
        img = nib.load(str(out / "P001" / f"{name}.nii.gz"))
        assert img.shape == SOURCE_SHAPE
        np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
    stack = np.stack([volumes(out)[f"P001/adc_sample_{k}.nii.gz"] for k in (0, 1)]).astype(np.float64)
    np.testing.assert_array_equal(volumes(out)["P001/adc_std.nii.gz"], np.std(stack, axis=0).astype(np.float32))
    assert [r["patient_id"] for r in read_csv(out / "core_volume_spread.csv")] == ["P001"]

    evaluation = tmp_path / "evaluation"
    assert evaluate_script.main(["--pred", f"tiny={out}", "--gt", str(raw), "--out", str(evaluation), "--n_panels",
                                 "0", "--clinical"]) == 0
    unc = read_csv(evaluation / "uncertainty.csv")
    assert {(r["modality"], r["patient_id"]) for r in unc} == {(m, p) for m in ("dwi", "adc") for p in ("P001", "all")}
    assert len(read_csv(evaluation / "clinical_per_patient.csv")) == 2  # P001, samples 0 and 1

    capsys.readouterr()
    assert sample(run, raw, tmp_path / "one", "--summary") == 2  # --n_samples 1
    assert "--summary needs --n_samples 2 or more" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "one").exists()


def test_folders_sampled_before_samplers_existed_resume_only_with_the_same_noise(tmp_path):
    import json

    from ldm.inference.run_sampling import SETTINGS_FILE, check_settings
    from ldm.util import ConfigError

    old = {"checkpoint": "c", "steps": 3, "eta": 0.0, "seed": 1, "overrides": [], "precision": "32",
           "initial_noise": "zero_mean", "batch_size": 4}
    new = {**old, "sampler": "ddim", "sampler_params": {}, "step_noise": "per_slice", "batch_size": 8}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(old))
    check_settings(tmp_path, new)  # eta 0: DDIM then is DDIM now, whatever the batch
    with pytest.raises(ConfigError, match="sampler=.*'ddim'.*'dpmsolver\\+\\+'"):
        check_settings(tmp_path, {**new, "sampler": "dpmsolver++"})
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({**old, "eta": 1.0}))
    with pytest.raises(ConfigError, match="step_noise='per_batch'"):  # DDIM's eta > 0 noise was per batch
        check_settings(tmp_path, {**new, "eta": 1.0})
    check_settings(tmp_path, {**new, "eta": 1.0, "sampler": "bridge"})  # the bridge drew it per slice
