"""The GAN baselines through the project's command lines on a tiny cohort: trained by main.py,
sampled into NIfTI volumes in source geometry by scripts/sample_LDM.py, scored by
scripts/evaluate.py; the unpaired data of CycleGAN; the refusals of main.py and sample_LDM.py; the
BBDM config (the cBBDM's without the concatenation)."""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

import main as launcher
from ldm.data.preprocessing.pipeline import preprocess_cohort
from ldm.data.training.datasets import CTPMRISlices
from ldm.data.training.unpaired import UnpairedCTPMRISlices
from tests.helpers.gan_models import model_config
from tests.helpers.raw_patients import AFFINE, SIZE, SOURCE_SHAPE, write_raw_patient
from tests.helpers.scripts import error_line, load_script, read_csv

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

sample_script = load_script("sample_LDM")
evaluate_script = load_script("evaluate")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("gan_cohort")
    for i, pid in enumerate(("P001", "P002")):
        write_raw_patient(root / "raw" / pid, i + 1)
    preprocess_cohort(root / "raw", root / "npy", size=SIZE, progress=False)
    return root / "raw", root / "npy"


def write_config(folder: Path, kind: str, npy: Path, **params) -> Path:
    model = model_config(kind, image_size=SIZE, **params)
    train = "ldm.data.training.unpaired.UnpairedCTPMRISlices" if kind == "cyclegan" else \
        "ldm.data.training.datasets.CTPMRISlices"
    config = {
        "model": {"base_learning_rate": 1e-4, **model},
        "data": {"target": "ldm.data.training.datamodule.DataModuleFromConfig", "params": {
            "batch_size": 2, "num_workers": 0,
            "train": {"target": train, "params": {"data_root": str(npy), "augment": True}},
            "validation": {"target": "ldm.data.training.datasets.CTPMRISlices", "params": {"data_root": str(npy)}}}},
        "lightning": {"trainer": {"accelerator": "cpu", "max_steps": 4, "limit_val_batches": 1,
                                  "val_check_interval": 2, "check_val_every_n_epoch": None,
                                  "enable_progress_bar": False},
                      "callbacks": {"image_logger": {"params": {"batch_frequency": 1, "max_images": 2,
                                                                "increase_log_steps": False}}}},
    }
    path = folder / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(*args: str) -> int:
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        return launcher.main(list(args))
    finally:
        os.chdir(cwd)
        os.environ.pop(launcher._RUN_TIMESTAMP_ENV, None)


@pytest.fixture(scope="module")
def pix2pix_run(cohort, tmp_path_factory):
    raw, npy = cohort
    folder = tmp_path_factory.mktemp("pix2pix_run")
    assert launch("--base", str(write_config(folder, "pix2pix", npy)), "-t", "-l", str(folder / "logs"),
                  "-n", "pix2pix") == 0
    (run,) = (folder / "logs").iterdir()
    return run


def test_main_trains_a_gan_run_counting_both_optimisers_steps(pix2pix_run):
    ckpt = torch.load(pix2pix_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["gan"]["generator_updates"] == 2  # two optimiser steps per batch
    assert len(ckpt["optimizer_states"]) == 2
    assert list((pix2pix_run / "images" / "train").glob("samples_gs-*.png"))
    assert (pix2pix_run / "data_contract.json").is_file()


def test_sample_ldm_writes_source_geometry_and_evaluate_scores_it(pix2pix_run, cohort, tmp_path, capsys):
    raw, npy = cohort
    out_raw, out_npy = tmp_path / "from_raw", tmp_path / "from_npy"
    common = ["-r", str(pix2pix_run), "--device", "cpu", "--no_progress"]
    assert sample_script.main([*common, "--data", str(raw), "--outdir", str(out_raw), "--batch_size", "1"]) == 0
    assert "a GAN: one forward pass" in capsys.readouterr().out
    assert sample_script.main([*common, "--data", str(npy), "--outdir", str(out_npy), "--batch_size", "5",
                               "--seed", "7"]) == 0
    for pid in ("P001", "P002"):
        mask = np.asarray(nib.load(str(raw / pid / "mask.nii.gz")).dataobj) > 0
        for m in ("dwi", "adc"):
            img = nib.load(str(out_raw / pid / f"{m}_sample_0.nii.gz"))
            data = np.asarray(img.dataobj)
            assert img.shape == SOURCE_SHAPE
            np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
            assert (data[~mask] == 0).all() and np.abs(data[mask]).max() > 0
            # eval mode: no dropout, BatchNorm's running statistics: batch size and seed change nothing
            other = np.asarray(nib.load(str(out_npy / pid / f"{m}_sample_0.nii.gz")).dataobj)
            np.testing.assert_allclose(other, data, rtol=1e-5, atol=1e-5 * np.abs(data).max())
    assert evaluate_script.main(["--pred", f"Pix2Pix={out_raw}", "--gt", str(raw), "--out", str(tmp_path / "eval"),
                                 "--n_panels", "0"]) == 0
    rows = read_csv(tmp_path / "eval" / "metrics_per_patient.csv")
    assert {r["patient_id"] for r in rows if r["run"] == "Pix2Pix"} == {"P001", "P002"}


def test_sample_ldm_refuses_a_sampler_for_a_gan(pix2pix_run, cohort, tmp_path, capsys):
    raw, npy = cohort
    base = ["-r", str(pix2pix_run), "--data", str(npy), "--outdir", str(tmp_path / "o"), "--no_progress"]
    assert sample_script.main([*base, "--sampler", "ddim"]) == 2
    line = error_line(capsys.readouterr().err, "sample_LDM.py")
    assert "--sampler ddim" in line and "is a GAN" in line
    assert sample_script.main([*base, "model.params.sampler=ddim"]) == 2
    line = error_line(capsys.readouterr().err, "sample_LDM.py")
    assert "'sampler'" in line and "is a GAN" in line


def test_main_trains_cyclegan_on_unpaired_slices(cohort, tmp_path):
    raw, npy = cohort
    assert launch("--base", str(write_config(tmp_path, "cyclegan", npy)), "-t", "-l", str(tmp_path / "logs"),
                  "lightning.trainer.max_steps=2") == 0
    (run,) = (tmp_path / "logs").iterdir()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["gan"]["generator_updates"] == 1
    assert any(k.startswith("inverse_generator.") for k in ckpt["state_dict"])


def test_unpaired_slices_keep_the_ctp_and_draw_the_mri_elsewhere(cohort):
    raw, npy = cohort
    paired, unpaired = CTPMRISlices(npy), UnpairedCTPMRISlices(npy)
    assert len(paired) == len(unpaired)
    torch.manual_seed(0)
    moved = 0
    for i in range(len(unpaired)):
        a, b = paired[i], unpaired[i]
        assert torch.equal(a["ctp"], b["ctp"]) and torch.equal(a["mask"], b["mask"])
        j = next(k for k in range(len(paired)) if (paired[k]["patient_id"], paired[k]["slice_index"])
                 == (b["mri_patient_id"], b["mri_slice_index"]))
        assert torch.equal(b["mri"], paired[j]["mri"])  # the drawn slice's own MRI
        moved += j != i
    assert moved >= len(unpaired) - 2  # the pairing is (almost always) broken


@pytest.mark.parametrize("override, expected", [
    ("model.params.sampler=ddim", "'sampler'"),
    ("model.params.generator_config.params.out_channels=3", "generator_config.params.out_channels is 3"),
    ("model.params.image_size=[16,16]", "model.params.image_size 16 x 16"),
])
def test_main_refuses_bad_gan_configs_in_one_line(override, expected, cohort, tmp_path, capsys):
    raw, npy = cohort
    code = launch("--base", str(write_config(tmp_path, "pix2pix", npy)), "-t", "-l", str(tmp_path / "logs"), override)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").glob("*/checkpoints"))


def test_gan_configs_build_and_bbdm_is_cbbdm_without_the_concatenation(repo_root):
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    for name in ("pix2pix", "cyclegan", "paired_cyclegan"):
        for folder in ("baselines", "demo"):
            cfg = OmegaConf.load(repo_root / "configs" / folder / f"{name}.yaml")
            model = instantiate_from_config(cfg.model)  # every key taken, channels and sizes checked
            assert model.generator.out_channels == 2 and model.generator.in_channels == 15
            assert tuple(cfg.model.params.image_size) == ((64, 64) if folder == "demo" else (192, 224))
    for folder, base in (("bbdm", "cbbdm"), ("demo", "cbbdm")):
        bbdm = OmegaConf.to_container(OmegaConf.load(repo_root / "configs" / folder / "bbdm.yaml"))
        cbbdm = OmegaConf.to_container(OmegaConf.load(repo_root / "configs" / folder / f"{base}.yaml"))
        assert bbdm["model"]["params"]["concat_condition"] is False
        assert bbdm["model"]["params"]["unet_config"]["params"]["in_channels"] == 3
        bbdm["model"]["params"]["concat_condition"] = True
        bbdm["model"]["params"]["unet_config"]["params"]["in_channels"] = 18
        assert bbdm == cbbdm  # everything else is the cBBDM's


def test_demo_bbdm_trains_without_the_concatenation(repo_root):
    from omegaconf import OmegaConf

    from ldm.util import instantiate_from_config

    cfg = OmegaConf.load(repo_root / "configs" / "demo" / "bbdm.yaml").model
    cfg.params.first_stage_config.params.ckpt_path = None
    model = instantiate_from_config(cfg)
    ctp, mri = torch.rand(2, 15, 64, 64) * 2 - 1, torch.rand(2, 2, 64, 64) * 2 - 1
    loss, _ = model.shared_step({"ctp": ctp, "mri": mri})
    loss.backward()
    assert torch.isfinite(loss) and model.model.diffusion_model.input_blocks[0][0].in_channels == 3
