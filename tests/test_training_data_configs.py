"""Every training config feeds its stage the reference's data path: the reference's augmentation on
the training split (VQGAN, cLDM, cLDM-PT, cBBDM, cBBDM-PT alike; translation scaled with the slice
size), none on validation."""
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ldm.data.training.augmentation import SliceAugmentation
from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
TRAINING_CONFIGS = sorted(p for folder in ("autoencoder", "latent-diffusion", "bbdm", "demo")
                          for p in (ROOT / "configs" / folder).glob("*.yaml"))


def test_every_stage_has_a_training_config():
    names = {p.relative_to(ROOT / "configs").as_posix() for p in TRAINING_CONFIGS}
    assert {"autoencoder/VQGAN.yaml", "latent-diffusion/ldm.yaml", "latent-diffusion/ldm_lapt.yaml",
            "bbdm/cbbdm.yaml", "bbdm/cbbdm_pt.yaml", "demo/vqgan.yaml", "demo/ldm.yaml",
            "demo/ldm_lapt.yaml", "demo/cbbdm.yaml", "demo/cbbdm_pt.yaml"} <= names


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_training_split_augments_as_the_reference_and_validation_does_not(path):
    data = OmegaConf.load(path).data.params
    augmentation = SliceAugmentation.from_config(data.train.params.get("augment"))
    assert augmentation is not None, f"{path}: the training split does not augment"
    size = 64 if path.parent.name == "demo" else 192
    assert augmentation.flip_p == 0.5 and augmentation.affine_p == 0.9
    assert augmentation.max_rotation == pytest.approx(math.pi / 16)
    assert augmentation.max_translation == pytest.approx((32 * size / 192,) * 2, abs=1e-3)
    assert augmentation.max_scale == (0.001, 0.001)
    assert not data.validation.params.get("augment", False), f"{path}: validation must not augment"


def test_config_augment_reaches_the_dataset(tmp_path):
    """The YAML mapping builds the dataset's augmentation (with OmegaConf nodes as values)."""
    from ldm.data.preprocessing.pipeline import preprocess_cohort
    from ldm.data.synthetic.cohort import generate_patient, write_patient

    p = generate_patient([1, 2], size=(32, 32), n_slices=3, n_timepoints=15)
    write_patient(p, tmp_path / "raw" / "P0")
    preprocess_cohort(tmp_path / "raw", tmp_path / "npy", size=(32, 32), progress=False)
    node = OmegaConf.load(ROOT / "configs/demo/ldm.yaml").data.params.train
    node.params.data_root = str(tmp_path / "npy")
    dataset = instantiate_from_config(node)
    assert dataset.augmentation.max_translation == pytest.approx((10.667, 10.667))
