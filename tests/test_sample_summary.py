"""sample_LDM.py --summary: voxel-wise mean / std maps over the samples on disk (numpy's mean and
std of the written files, in their geometry), the core volume's spread, resuming, and K < 2.
Sampling uses the stand-in slice sampler of tests/test_sampling.py (the real script with a tiny
model runs in tests/test_sampling_ldm.py)."""
import json

import nibabel as nib
import numpy as np
import pytest

from ldm.data.record import load_index
from ldm.inference.sample_summary import SPREAD_CSV, SPREAD_JSON, summarise_cohort, summarise_patient, summary_path
from ldm.inference.volume_sampler import sample_path
from ldm.util import ConfigError
from tests.helpers.raw_patients import AFFINE, SOURCE_SHAPE, cohort, run  # noqa: F401  (cohort is a fixture)
from tests.helpers.scripts import read_csv


def samples_on_disk(outdir, pid, modality, ks):
    return np.stack([np.asarray(nib.load(str(sample_path(outdir, pid, modality, k))).dataobj) for k in ks])


def expected_core_ml(raw, outdir, pid, ks, threshold=620.0):
    """Independent: ADC < threshold inside the raw brain mask, voxel volume from the affine's columns."""
    mask = np.asarray(nib.load(str(raw / pid / "mask.nii.gz")).dataobj) > 0
    voxel_ml = float(np.prod(np.linalg.norm(AFFINE[:3, :3], axis=0))) / 1000
    return [float(((s < threshold) & mask).sum()) * voxel_ml for s in samples_on_disk(outdir, pid, "adc", ks)]


def test_summary_maps_equal_numpy_over_the_written_samples(cohort, tmp_path):  # noqa: F811
    raw, npy = cohort
    records = load_index(npy)
    run(npy, tmp_path, n_samples=3, batch_size=8, seed=0)
    summarise_cohort(tmp_path, records, sorted(records), 3)
    for pid in records:
        for modality in ("dwi", "adc"):
            stack = samples_on_disk(tmp_path, pid, modality, range(3)).astype(np.float64)
            for statistic, expected in (("mean", np.mean(stack, axis=0)), ("std", np.std(stack, axis=0))):
                img = nib.load(str(summary_path(tmp_path, pid, modality, statistic)))
                sample = nib.load(str(sample_path(tmp_path, pid, modality, 0)))
                assert img.shape == SOURCE_SHAPE and np.asarray(img.dataobj).dtype == np.float32
                np.testing.assert_array_equal(np.asarray(img.dataobj), expected.astype(np.float32))
                for getter in ("get_qform", "get_sform"):
                    np.testing.assert_array_equal(getattr(img, getter)(), getattr(sample, getter)())
                assert img.header.get_zooms() == sample.header.get_zooms()
            assert np.asarray(nib.load(str(summary_path(tmp_path, pid, modality, "std"))).dataobj).max() > 0
        spread = json.loads((tmp_path / pid / SPREAD_JSON).read_text())
        core = expected_core_ml(raw, tmp_path, pid, range(3))
        assert spread["samples"] == [0, 1, 2] and spread["core_ml"] == pytest.approx(core, rel=1e-6)
        assert spread["median_ml"] == pytest.approx(np.median(core), rel=1e-6)
        assert spread["p5_ml"] == pytest.approx(np.percentile(core, 5), rel=1e-6)
        assert spread["p95_ml"] == pytest.approx(np.percentile(core, 95), rel=1e-6)
    assert any(json.loads((tmp_path / p / SPREAD_JSON).read_text())["max_ml"] > 0 for p in records)
    rows = read_csv(tmp_path / SPREAD_CSV)
    assert [r["patient_id"] for r in rows] == sorted(records) and {r["n_samples"] for r in rows} == {"3"}


def test_summary_after_resume_uses_exactly_the_first_k_samples_on_disk(cohort, tmp_path):  # noqa: F811
    _, npy = cohort
    records = load_index(npy)
    run(npy, tmp_path, n_samples=2, batch_size=8, seed=0, patients=["P001"])
    summarise_cohort(tmp_path, records, ["P001"], 2)
    two = np.asarray(nib.load(str(summary_path(tmp_path, "P001", "adc", "mean"))).dataobj)
    run(npy, tmp_path, n_samples=4, batch_size=8, seed=0, patients=["P001"])  # resumes: k = 2, 3 are new
    summarise_cohort(tmp_path, records, ["P001"], 4)
    stack = samples_on_disk(tmp_path, "P001", "adc", range(4)).astype(np.float64)
    np.testing.assert_array_equal(np.asarray(nib.load(str(summary_path(tmp_path, "P001", "adc", "std"))).dataobj),
                                  np.std(stack, axis=0).astype(np.float32))
    summarise_patient(tmp_path, records["P001"], 2)  # k >= K on disk is not used
    np.testing.assert_array_equal(np.asarray(nib.load(str(summary_path(tmp_path, "P001", "adc", "mean"))).dataobj),
                                  two)
    def stamps():
        return {p: p.stat().st_mtime_ns for pattern in ("*_mean.nii.gz", "*_std.nii.gz", SPREAD_JSON)
                for p in (tmp_path / "P001").glob(pattern)}

    before = stamps()
    assert len(before) == 5
    bad = sample_path(tmp_path, "P001", "adc", 1)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), AFFINE), str(bad))
    with pytest.raises(ConfigError, match="patient P001: adc_sample_1.nii.gz has another shape or affine"):
        summarise_patient(tmp_path, records["P001"], 2)
    assert stamps() == before  # nothing written
    sample_path(tmp_path, "P001", "dwi", 1).unlink()
    with pytest.raises(ConfigError, match="patient P001: dwi_sample_1.nii.gz is missing"):
        summarise_patient(tmp_path, records["P001"], 2)
    with pytest.raises(ConfigError, match="--summary needs --n_samples 2 or more"):
        summarise_patient(tmp_path, records["P001"], 1)
