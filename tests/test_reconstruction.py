"""scripts/reconstruct_VQGAN.py: the first stage's D(E(x)) of a cohort, written like synthesised
volumes (source geometry, physical units, the writable range in the header), scored by evaluate.py."""
import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from ldm.data.training.datasets import MRISlices
from ldm.data.preprocessing.reassembly import slices_to_volume
from ldm.inference.reconstruction import autoencoder_of, round_trip
from tests.helpers.raw_patients import SIZE, cohort  # noqa: F401  (the fixture)
from tests.helpers.scripts import error_line, load_script
from tests.helpers.vqgan_models import tiny_ddconfig, tiny_lossconfig, tiny_vqmodel

script = load_script("reconstruct_VQGAN")
pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _vqgan_run(root, data_root):
    torch.manual_seed(0)
    model = tiny_vqmodel(ddconfig=tiny_ddconfig(resolution=SIZE[0]))
    config = {"model": {"target": "taming.models.vqgan.VQModel", "params": {
        "ddconfig": tiny_ddconfig(resolution=SIZE[0]), "lossconfig": tiny_lossconfig(), "n_embed": 32,
        "embed_dim": 3}},
        "data": {"target": "ldm.data.training.datamodule.DataModuleFromConfig", "params": {
            "batch_size": 2, "train": {"target": "ldm.data.training.datasets.MRISlices", "params": {"data_root": str(data_root)}}}}}
    (root / "configs").mkdir(parents=True)
    (root / "checkpoints").mkdir()
    OmegaConf.save(OmegaConf.create(config), root / "configs" / "2025-01-01T00-00-00-project.yaml")
    torch.save({"state_dict": model.state_dict(), "global_step": 0}, root / "checkpoints" / "last.ckpt")
    return model.eval()


def test_round_trip_is_the_vqgans_forward_and_a_latent_models_first_stage():
    model = tiny_vqmodel().eval()
    x = torch.rand(2, 2, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(round_trip(model, x), model(x)[0].clamp(-1, 1))
    holder = torch.nn.Module()
    holder.first_stage_model = model
    assert autoencoder_of(holder) is model
    from ldm.util import ConfigError
    with pytest.raises(ConfigError, match="neither a VQGAN nor a latent model"):
        autoencoder_of(torch.nn.Linear(2, 2))


def test_the_script_writes_every_patient_with_mri_in_source_space(cohort, tmp_path, capsys):  # noqa: F811
    raw, npy = cohort
    model = _vqgan_run(tmp_path / "run", npy)
    out = tmp_path / "recon"
    assert script.main(["-r", str(tmp_path / "run"), "--data", str(npy), "--outdir", str(out), "--no_progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["P001", "P002"]  # P003 is CTP-only: nothing to reconstruct
    dataset = MRISlices(npy, patients=["P001"])
    mri = torch.stack([dataset[i]["mri"] for i in range(len(dataset))])
    with torch.no_grad():
        expected_slices = model(mri)[0].clamp(-1, 1).numpy()
    record = dataset.records["P001"]
    for channel, modality in enumerate(("dwi", "adc")):
        image = nib.load(str(out / "P001" / f"{modality}_sample_0.nii.gz"))
        source = nib.load(str(raw / "P001" / f"{modality}.nii.gz"))
        assert image.shape == source.shape and np.allclose(image.affine, source.affine, atol=1e-5)
        expected = slices_to_volume(expected_slices[:, channel], record, modality)
        np.testing.assert_allclose(image.get_fdata(), expected, rtol=1e-5, atol=1e-3)
        assert (float(image.header["cal_min"]), float(image.header["cal_max"])) == pytest.approx(
            record.intensity_range(modality), rel=1e-6)
    capsys.readouterr()
    assert script.main(["-r", str(tmp_path / "run"), "--data", str(npy), "--outdir", str(out), "--no_progress"]) == 0
    assert "(2 already there)" in capsys.readouterr().out
    assert script.main(["-r", str(tmp_path / "nothing"), "--data", str(npy), "--outdir", str(out)]) == 2
    assert "does not exist" in error_line(capsys.readouterr().err, "reconstruct_VQGAN.py")
