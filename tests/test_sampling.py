"""Per-patient volume sampling: source geometry, CTP-only patients, resuming, atomic writes and
independence from batching. A stand-in slice sampler (a fixed function of CTP and x_T) keeps these
fast; tests/test_sampling_ldm.py runs the real script with a tiny LatentDiffusion."""
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from ldm.data.record import load_index, load_reference
from ldm.inference.seeding import slice_noise, stable_seed
from ldm.inference.volume_sampler import missing_samples, sample_path
from ldm.util import ConfigError
from tests.helpers.raw_patients import AFFINE, SOURCE_SHAPE, FakeSliceSampler, cohort, run  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def volume(path):
    return np.asarray(nib.load(str(path)).dataobj)


def test_noise_is_stable_across_processes_and_keyed_by_slice():
    a = slice_noise(7, "P001", 0, 3, (3, 4, 4))
    torch.testing.assert_close(a, slice_noise(7, "P001", 0, 3, (3, 4, 4)), rtol=0, atol=0)
    for other in [(8, "P001", 0, 3), (7, "P002", 0, 3), (7, "P001", 1, 3), (7, "P001", 0, 4)]:
        assert not torch.equal(a, slice_noise(*other, (3, 4, 4)))
    code = "from ldm.inference.seeding import stable_seed; print(stable_seed(7, 'P001', 0, 3))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "random", "PATH": ""})
    assert int(out.stdout) == stable_seed(7, "P001", 0, 3)  # not Python's salted hash()


def test_volumes_have_source_geometry_units_and_background(cohort, tmp_path):
    raw, npy = cohort
    report = run(npy, tmp_path, n_samples=2, batch_size=4, seed=0)
    assert sorted(report.written) == ["P001", "P002", "P003"] and report.skipped == []
    record = load_index(npy)["P001"]
    mask = volume(raw / "P001" / "mask.nii.gz") > 0
    for k in range(2):
        for modality in ("dwi", "adc"):
            img = nib.load(str(sample_path(tmp_path, "P001", modality, k)))
            assert img.shape == SOURCE_SHAPE
            np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
            source = nib.load(str(raw / "P001" / "dwi.nii.gz"))
            np.testing.assert_allclose(img.get_qform(), source.get_qform(), atol=1e-5)
            assert img.header.get_xyzt_units()[0] == "mm"
            data = np.asarray(img.dataobj)
            assert data.dtype == np.float32
            assert (data[~mask] == 0).all()  # outside the brain, and the skipped end slices
            lo, hi = record.intensity_range(modality)
            inside = data[mask]
            assert inside.min() >= lo - 1e-3 and inside.max() <= hi + 1e-3  # physical units of this patient
            assert inside.std() > 0.05 * (hi - lo)
    assert not np.array_equal(volume(sample_path(tmp_path, "P001", "dwi", 0)),
                              volume(sample_path(tmp_path, "P001", "dwi", 1)))  # samples differ


def test_results_do_not_depend_on_batching(cohort, tmp_path):
    _, npy = cohort
    outs = {}
    for batch_size in (1, 3, 7):
        sampler = FakeSliceSampler()
        run(npy, tmp_path / f"b{batch_size}", sampler, n_samples=2, batch_size=batch_size, seed=5)
        assert max(sampler.calls) == batch_size  # batches do cross patients and samples
        outs[batch_size] = {p.relative_to(tmp_path / f"b{batch_size}"): volume(p)
                            for p in sorted((tmp_path / f"b{batch_size}").rglob("*.nii.gz"))}
    assert len(outs[1]) == 3 * 2 * 2
    for batch_size in (3, 7):
        assert outs[batch_size].keys() == outs[1].keys()
        for key in outs[1]:
            np.testing.assert_array_equal(outs[batch_size][key], outs[1][key])
    run(npy, tmp_path / "seed6", n_samples=1, batch_size=3, seed=6)
    assert not np.array_equal(volume(tmp_path / "seed6" / "P001" / "dwi_sample_0.nii.gz"),
                              outs[1][Path("P001/dwi_sample_0.nii.gz")])


def test_ctp_only_patient_uses_the_cohort_reference(cohort, tmp_path):
    raw, npy = cohort
    reference = load_reference(npy)
    run(npy, tmp_path, patients=["P003"], batch_size=4, seed=0, reference=reference)
    mask = volume(raw / "P003" / "mask.nii.gz") > 0
    for modality in ("dwi", "adc"):
        data = volume(sample_path(tmp_path, "P003", modality, 0))
        assert data.shape == SOURCE_SHAPE and (data[~mask] == 0).all()
        lo, hi = reference.intensity_range(modality)
        assert data[mask].min() >= lo - 1e-3 and data[mask].max() <= hi + 1e-3
    with pytest.raises(ConfigError, match="P003.*CTP-only"):
        run(npy, tmp_path / "noref", patients=["P003"], reference=None)


def test_second_run_skips_finished_patients_and_redoes_missing_samples(cohort, tmp_path):
    _, npy = cohort
    first = run(npy, tmp_path, n_samples=2, batch_size=5, seed=0)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")}
    sampler = FakeSliceSampler()
    second = run(npy, tmp_path, sampler, n_samples=2, batch_size=5, seed=0)
    assert sorted(second.skipped) == sorted(first.written) and second.written == [] and sampler.calls == []
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.nii.gz")} == stamps

    before = volume(sample_path(tmp_path, "P002", "adc", 1))
    sample_path(tmp_path, "P002", "adc", 1).unlink()
    assert missing_samples(tmp_path, "P002", 2) == [1]
    third = run(npy, tmp_path, sampler, n_samples=3, batch_size=5, seed=0)  # one lost file + a new sample k=2
    n_slices = {p: r.n_slices for p, r in load_index(npy).items()}
    assert sum(sampler.calls) == n_slices["P002"] + sum(n_slices.values())
    assert sorted(third.written) == ["P001", "P002", "P003"]
    np.testing.assert_array_equal(volume(sample_path(tmp_path, "P002", "adc", 1)), before)  # same seed, same slice


def test_interrupted_write_leaves_no_partial_file(cohort, tmp_path, monkeypatch):
    _, npy = cohort
    real_save = nib.save
    calls = {"n": 0}

    def dying_save(image, filename):
        calls["n"] += 1
        if calls["n"] == 3:  # P001 sample 0 written (dwi, adc); die half-way through P002's dwi
            Path(filename).write_bytes(b"\x1f\x8b half a gzip stream")
            raise KeyboardInterrupt
        real_save(image, filename)

    monkeypatch.setattr(nib, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(npy, tmp_path, batch_size=64, seed=0)
    monkeypatch.setattr(nib, "save", real_save)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["P001/adc_sample_0.nii.gz", "P001/dwi_sample_0.nii.gz"]  # no temporary, no partial file
    for name in files:
        assert volume(tmp_path / name).shape == SOURCE_SHAPE
    report = run(npy, tmp_path, batch_size=64, seed=0)
    assert report.skipped == ["P001"] and sorted(report.written) == ["P002", "P003"]


def test_interrupted_sampling_keeps_finished_samples(cohort, tmp_path):
    _, npy = cohort
    n_first = load_index(npy)["P001"].n_slices

    class Failing(FakeSliceSampler):
        def __call__(self, ctp, noise):
            if sum(self.calls) >= n_first:
                raise RuntimeError("CUDA out of memory (simulated)")
            return super().__call__(ctp, noise)

    with pytest.raises(RuntimeError, match="simulated"):
        run(npy, tmp_path, Failing(), batch_size=n_first, seed=0)
    assert missing_samples(tmp_path, "P001", 1) == [] and missing_samples(tmp_path, "P002", 1) == [0]
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]
