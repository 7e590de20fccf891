"""`make demo` at a minimal size: every stage of scripts/demo.sh runs, through the user's commands."""
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "DEMO_N_TRAIN": "2", "DEMO_N_VAL": "1", "DEMO_N_TEST": "1", "DEMO_SLICES": "6",
    "DEMO_VQGAN_STEPS": "4", "DEMO_LDM_STEPS": "4", "DEMO_LAPT_STEPS": "4", "DEMO_SAMPLE_STEPS": "2",
    "DEMO_BASELINE_STEPS": "4",
    "DEMO_ACCELERATOR": "cpu",
}


def _demo(out: Path, **extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **TINY, "PYTHON": sys.executable, "DEMO_OUT": str(out), **extra}
    return subprocess.run(["bash", str(ROOT / "scripts/demo.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_demo_pipeline_runs_every_stage_and_writes_source_space_volumes(tmp_path):
    out = tmp_path / "demo"
    proc = _demo(out, DEMO_PT_TARGETS="reconstruction input")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for k in range(1, 12):
        assert f"==> [{k}/11]" in proc.stdout
    assert "Demo finished" in proc.stdout

    # one trained run per stage, each with its checkpoint and merged config
    runs = {p.name.split("_", 1)[1]: p for p in (out / "logs").iterdir()}
    assert set(runs) == {"vqgan", "cldm", "cldm_pt", "cldm_pt_input", "cldm_continued", "pix2pix"}
    for run in runs.values():
        assert (run / "checkpoints/last.ckpt").is_file() and list((run / "configs").glob("*.yaml"))
    # post-training and its control started from the stage-2 training weights (init_weights raw, as the
    # reference) and trained them; the control with both image-space weights 0
    ldm = torch.load(runs["cldm"] / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    codebook = "first_stage_model.quantize.embedding.weight"
    for name in ("cldm_pt", "cldm_pt_input", "cldm_continued"):
        pt = torch.load(runs[name] / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        start, trained = ldm["model.diffusion_model.out.2.weight"], pt["model.diffusion_model.out.2.weight"]
        assert trained.shape == start.shape and not torch.equal(trained, start)
        assert (trained - start).abs().max() < 0.05  # a few small steps away from it, not a fresh model
        assert torch.equal(pt[codebook], ldm[codebook])  # the first stage stays frozen
    control_config = next((runs["cldm_continued"] / "configs").glob("*project.yaml")).read_text()
    assert "lambda_image: 0" in control_config and "lambda_lesion: 0" in control_config
    assert "image_target: input" in next((runs["cldm_pt_input"] / "configs").glob("*project.yaml")).read_text()

    # the test patient's synthesised volumes lie in its source geometry, zero outside the brain
    (patient,) = [p for p in (out / "raw/test").iterdir() if p.is_dir()]
    dwi_src, mask = nib.load(patient / "dwi.nii.gz"), nib.load(patient / "mask.nii.gz").get_fdata() > 0
    for model in ("cldm", "cldm_continued", "cldm_pt", "cldm_pt_input", "vqgan", "pix2pix"):
        for modality in ("dwi", "adc"):
            img = nib.load(out / "samples" / model / patient.name / f"{modality}_sample_0.nii.gz")
            assert img.shape == dwi_src.shape
            np.testing.assert_allclose(img.affine, dwi_src.affine, atol=1e-5)
            data = img.get_fdata()
            assert np.isfinite(data).all() and (data[~mask] == 0).all() and (data[mask] != 0).any()

    import json

    for model in ("cldm", "cldm_continued", "cldm_pt"):
        settings = json.loads((out / "samples" / model / "sampling.json").read_text())
        assert (settings["sampler"], settings["steps"]) == ("dpmsolver++", 2)
        assert settings["sampler_params"] == {"clip_x0": True}  # the demo clips x0_hat (DEMO_CLIP_X0=1)
    for name in ("cldm", "cldm_pt", "cldm_continued"):  # the same stage-2 settings in stages 2 and 3
        project = next((runs[name] / "configs").glob("*project.yaml")).read_text()
        assert "lesion_weight: 100" in project and "parameterization: v" in project and "method: pixel_unshuffle" in project

    table = (out / "evaluation/table1.md").read_text()
    assert "| cLDM |" in table and "| cLDM (continued) |" in table and "| cLDM-PT |" in table
    assert "| cLDM-PT (input target) |" in table and "| VQGAN reconstruction (ceiling) |" in table
    assert "| Pix2Pix |" in table  # the Table 1 baseline the demo's CPU time allows
    assert "| ground truth (training window) |" in table and "### Lesion contrast in physical units" in table
    assert "#### cLDM-PT vs cLDM (continued)" in table and "#### cLDM-PT (input target) vs cLDM (continued)" in table
    assert "Failed slices" in table
    assert (out / "evaluation/clinical.md").is_file() and "Clinical read-out" in proc.stdout
    assert list((out / "evaluation/panels").glob("*.png"))
    assert table.splitlines()[0] in proc.stdout  # the comparison is printed


def test_demo_refuses_to_delete_a_folder_it_did_not_make(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = _demo(out)
    assert proc.returncode == 2
    assert "was not made by the demo" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("knob, value", [("DEMO_CLIP_X0", "yes"), ("DEMO_PARAMETERIZATION", "w"),
                                        ("DEMO_CONDITIONING", "nearest"), ("DEMO_SIZE", "100x100"),
                                        ("DEMO_SIZE", "128"), ("DEMO_SIZE", "16x64")])
def test_a_bad_knob_is_one_line_before_anything_is_written(tmp_path, knob, value):
    out = tmp_path / "demo"
    proc = _demo(out, **{knob: value})
    assert proc.returncode == 2 and knob in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_demo_size_sets_every_grid_key_and_the_volumes_keep_their_source_geometry(tmp_path):
    """A non-square grid (80 x 48, latents 20 x 12) through the cohort, stage 1, stage 2, post-training,
    the BBDM baseline (its own latent UNet), sampling and evaluation."""
    out = tmp_path / "demo"
    proc = _demo(out, DEMO_SIZE="80x48", DEMO_PT_TARGETS="reconstruction", DEMO_BASELINES="bbdm")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "80 x 48" in proc.stdout
    runs = {p.name.split("_", 1)[1]: p for p in (out / "logs").iterdir()}
    for name in ("cldm", "cldm_pt", "cldm_continued", "bbdm"):
        project = next((runs[name] / "configs").glob("*project.yaml")).read_text()
        assert project.count("- 20\n") >= 2 and project.count("- 12\n") >= 2, name  # model and UNet image_size
    for name in runs:  # the augmentation's shift: 32 px at 192 (10.667 at 64), here 13.333 x 8 px
        project = next((runs[name] / "configs").glob("*project.yaml")).read_text()
        assert "max_translation:\n          - 13.333\n          - 8.0\n" in project, name
    (patient,) = [p for p in (out / "raw/test").iterdir() if p.is_dir()]
    assert np.load(out / "npy/test" / patient.name / "mri.npy", mmap_mode="r").shape[-2:] == (80, 48)
    src = nib.load(patient / "dwi.nii.gz")
    for model in ("cldm", "cldm_pt", "bbdm", "vqgan"):
        img = nib.load(out / "samples" / model / patient.name / "dwi_sample_0.nii.gz")
        assert img.shape == src.shape
        np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    assert "| cLDM-PT |" in (out / "evaluation/table1.md").read_text()
