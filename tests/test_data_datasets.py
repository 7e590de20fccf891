"""CTPMRISlices / MRISlices over a tiny preprocessed cohort: shapes, ranges, exact -1 background,
joint augmentation, lesion oversampling, CTP-only patients, lazy memory maps in workers."""
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ldm.data.training.datasets import CTPMRISlices, MRISlices
from ldm.data.preprocessing.pipeline import preprocess_cohort
from ldm.data.record import load_index
from ldm.data.synthetic.cohort import generate_patient, write_patient

SIZE = (32, 32)


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    for i, volume in enumerate((25.0, 0.0)):  # one patient with a lesion, one without
        p = generate_patient([9, i], size=SIZE, n_slices=5, n_timepoints=15, lesion_volume_ml=volume,
                             lesion_territory="MCA deep", fov_jitter=3)
        write_patient(p, root / "raw" / f"P{i}")
    clinical = generate_patient([9, 5], size=SIZE, n_slices=4, n_timepoints=15)
    write_patient(clinical, root / "raw_clinical" / "C0", maps=("ctp", "mask"))
    preprocess_cohort(root / "raw", root / "train", size=SIZE, progress=False)
    preprocess_cohort(root / "raw", root / "train_percentile", size=SIZE, progress=False,
                      window="reference_percentile")
    preprocess_cohort(root / "raw_clinical", root / "clinical", size=SIZE, reference_dir=root / "train",
                      progress=False)
    return root


def _check_item(item, n_t=15):
    assert item["ctp"].shape == (n_t, *SIZE) and item["mri"].shape == (2, *SIZE)
    assert item["mask"].shape == (1, *SIZE) and item["lesion"].shape == (1, *SIZE)
    for key in ("ctp", "mri", "mask", "lesion"):
        assert item[key].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0} and set(item["lesion"].unique().tolist()) <= {0.0, 1.0}
    background = item["mask"][0] == 0
    for key in ("ctp", "mri"):
        assert item[key].min() >= -1 and item[key].max() <= 1
        assert (item[key][:, background] == -1.0).all()  # exactly -1, every channel
    assert (item["lesion"] <= item["mask"]).all()


@pytest.mark.parametrize("augment", [False, True])
def test_items_have_contract_shapes_ranges_and_background(splits, augment):
    torch.manual_seed(0)
    dataset = CTPMRISlices(splits / "train", augment=augment)
    records = load_index(splits / "train")
    assert len(dataset) == sum(r.n_slices for r in records.values())
    for index in range(len(dataset)):
        item = dataset[index]
        _check_item(item)
        assert item["has_mri"] is True and isinstance(item["patient_id"], str)
        assert item["slice_index"] in records[item["patient_id"]].slice_indices
        if augment:
            continue
        # without augmentation, the item is exactly the stored (unclipped) slice, clipped, masked and mapped
        record = records[item["patient_id"]]
        position = record.slice_indices.index(item["slice_index"])
        mri = np.load(record.array_path("mri"))[position].astype(np.float32)
        mask = np.load(record.array_path("mask"))[position]
        np.testing.assert_array_equal(item["mask"][0].numpy(), mask)
        np.testing.assert_allclose(item["mri"].numpy(), np.where(mask > 0, 2 * np.clip(mri, 0, 1) - 1, -1.0),
                                   atol=1e-6)


def test_augmentation_moves_images_and_masks_together(splits):
    torch.manual_seed(3)
    plain = CTPMRISlices(splits / "train")
    augmented = CTPMRISlices(splits / "train", augment=True)
    lesion_indices = [i for i in range(len(plain)) if plain[i]["lesion"].sum() >= 4]
    assert lesion_indices
    changed = 0
    for index in lesion_indices:
        for _ in range(3):
            item = augmented[index]
            changed += not torch.equal(item["mask"], plain[index]["mask"])
            _check_item(item)
            lesion, brain = item["lesion"][0] > 0, item["mask"][0] > 0
            if lesion.sum() < 2:
                continue  # translated out of view
            dwi, adc = item["mri"][0], item["mri"][1]
            healthy = brain & ~lesion
            # the lesion mask still sits on the bright-DWI / dark-ADC tissue after the warp
            assert dwi[lesion].mean() > dwi[healthy].mean() + 0.2
            assert adc[lesion].mean() < adc[healthy].mean()
    assert changed > 0


def test_lesion_oversampling_patient_filter_and_max_slices(splits):
    base = CTPMRISlices(splits / "train")
    lesion_slices = sum(1 for p, i in base.slices if base.records[p].lesion_voxels[i] > 0)
    assert lesion_slices > 0
    assert len(CTPMRISlices(splits / "train", lesion_oversample=3)) == len(base) + 2 * lesion_slices
    only = CTPMRISlices(splits / "train", patients=["P1"])
    assert {p for p, _ in only.slices} == {"P1"}
    limited = CTPMRISlices(splits / "train", max_slices=4)
    assert len(limited) == 4 and {p for p, _ in limited.slices} == {"P0", "P1"}
    with pytest.raises(ValueError, match="patient P9 is not in the preprocessed split"):
        CTPMRISlices(splits / "train", patients=["P9"])
    with pytest.raises(ValueError, match="lesion_oversample"):
        CTPMRISlices(splits / "train", lesion_oversample=0)
    with pytest.raises(FileNotFoundError, match="no index.json"):
        CTPMRISlices(splits / "raw")


def test_ctp_only_patients_are_usable_for_sampling(splits):
    dataset = CTPMRISlices(splits / "clinical")
    item = dataset[0]
    _check_item(item)
    assert item["has_mri"] is False
    assert (item["mri"] == -1).all() and (item["lesion"] == 0).all()
    assert (item["ctp"][:, item["mask"][0] > 0] > -1).any()
    with pytest.raises(ValueError, match="no patient with MRI"):
        CTPMRISlices(splits / "clinical", require_mri=True)
    with pytest.raises(ValueError, match="no patient with MRI"):
        MRISlices(splits / "clinical")
    with pytest.warns(UserWarning, match="CTP-only"):
        CTPMRISlices(splits / "clinical", augment=True)


def test_mri_dataset_and_worker_loading(splits):
    dataset = MRISlices(splits / "train", augment=True)
    item = dataset[0]
    assert sorted(item) == ["lesion", "mask", "mri"]  # the lesion serves a lesion-weighted first-stage loss
    assert item["mri"].shape == (2, *SIZE) and (item["mri"][:, item["mask"][0] == 0] == -1).all()
    assert item["lesion"].shape == (1, *SIZE) and (item["lesion"] <= item["mask"]).all()
    with_lesion = [dataset[i]["lesion"].sum() for i in range(len(dataset))]
    assert max(with_lesion) > 0
    assert len(pickle.dumps(dataset)) < 50_000  # open memory maps are never pickled into workers
    loader = DataLoader(CTPMRISlices(splits / "train", augment=True), batch_size=4, num_workers=2,
                        persistent_workers=True, shuffle=True)
    batches = [batch for _ in range(2) for batch in loader]
    assert batches[0]["ctp"].shape == (4, 15, *SIZE) and len(batches[0]["patient_id"]) == 4
    assert all((b["mri"] >= -1).all() and (b["mri"] <= 1).all() for b in batches)


def test_augmentation_warps_the_unclipped_maps_then_clips_as_the_reference(splits):
    """Reference order: warp the raw-scaled maps, then clip to [0, 1], mask and map to [-1, 1]. Warping
    already-clipped maps gives other values wherever bilinear interpolation mixes a clipped voxel."""
    from ldm.data.training.augmentation import AugmentParams, apply_augmentation

    params = AugmentParams(affine=True, angle=0.1, shift_h=0.5, shift_w=-0.5)
    # the percentile window clips both ends of every map, so the order shows (the lesion window clips little)
    dataset = CTPMRISlices(splits / "train_percentile", augment={"affine_p": 1.0})
    dataset.augmentation.sample = lambda generator=None: params
    index = next(i for i, (p, _) in enumerate(dataset.slices) if dataset.records[p].has_lesion)
    pid, position = dataset.slices[index]
    arrays = dataset.store.arrays(pid)
    mri = torch.from_numpy(np.array(arrays["mri"][position])).float()
    masks = torch.stack([torch.from_numpy(np.array(arrays[k][position])).float() for k in ("mask", "lesion")])
    warped, warped_masks = apply_augmentation(mri, masks, params)
    mask = (warped_masks[0] > 0.5).float()
    expected = torch.where(mask > 0, warped.clamp(0, 1) * 2 - 1, torch.tensor(-1.0))
    item = dataset[index]
    torch.testing.assert_close(item["mri"], expected)
    torch.testing.assert_close(item["mask"][0], mask)
    clipped_first, _ = apply_augmentation(mri.clamp(0, 1), masks, params)
    other = torch.where(mask > 0, clipped_first * 2 - 1, torch.tensor(-1.0))
    assert (item["mri"] - other).abs().max() > 1e-3  # the order matters, and ours is the reference's


def test_the_config_window_must_be_the_split_window(splits):
    from ldm.util import ConfigError

    assert CTPMRISlices(splits / "train", window="lesion").window.name == "lesion"
    assert MRISlices(splits / "train_percentile").window.name == "reference_percentile"  # None: the split's
    with pytest.raises(ConfigError, match=r"window: the config asks for reference_percentile.*train/index.json"
                                          r".*preprocessed with lesion"):
        CTPMRISlices(splits / "train", window="reference_percentile")
    with pytest.raises(ConfigError, match="DWI 0..2.5 x.*preprocessed with lesion .*DWI 0..3 x.*--dwi_headroom 2.5"):
        MRISlices(splits / "train", window={"name": "lesion", "dwi_headroom": 2.5})
    with pytest.raises(ConfigError, match="window 'percentile' does not exist"):
        MRISlices(splits / "train", window="percentile")
    with pytest.raises(ConfigError, match="window key 'adc_rang' does not exist"):
        MRISlices(splits / "train", window={"name": "lesion", "adc_rang": [0, 2500]})


def test_a_non_finite_slice_is_refused_by_name(tmp_path):
    p = generate_patient([9, 7], size=SIZE, n_slices=3, n_timepoints=15)
    write_patient(p, tmp_path / "raw" / "PNAN")
    preprocess_cohort(tmp_path / "raw", tmp_path / "npy", size=SIZE, progress=False)
    record = load_index(tmp_path / "npy")["PNAN"]
    ctp = np.load(record.array_path("ctp"))
    ctp[1, 4, 10, 10] = np.nan
    np.save(record.array_path("ctp"), ctp)
    dataset = CTPMRISlices(tmp_path / "npy")
    dataset[0]  # the other slices read fine
    with pytest.raises(ValueError, match=rf"patient PNAN: ctp.npy holds NaN/inf values in slice "
                                         rf"{record.slice_indices[1]}"):
        dataset[1]
