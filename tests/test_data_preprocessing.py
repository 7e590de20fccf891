"""Preprocessing: validation messages, atomic per-patient output, crop/pad, and the exact inverse."""
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ldm.data.transforms.brain_mask import derive_brain_mask
from ldm.data.transforms.cropping import brain_window
from ldm.data.preprocessing.pipeline import CohortError, main, preprocess_cohort
from ldm.data.record import INDEX_FILE, REFERENCE_FILE, load_index, load_reference
from ldm.data.synthetic.cohort import generate_patient, write_patient
from ldm.data.preprocessing.reassembly import place_slices, slices_to_volume, volume_to_nifti

SIZE = (32, 32)  # model size; sources are jittered around it so both crop and pad happen
N_T = 15


@pytest.fixture(scope="module")
def patients():
    return [generate_patient([5, i], size=SIZE, n_slices=5, n_timepoints=N_T, patient_id=f"P{i:03d}",
                             fov_jitter=5, lesion_volume_ml=20.0, lesion_territory="MCA deep") for i in range(3)]


def _write(root, patient, pid=None, maps=("ctp", "dwi", "adc", "mask", "lesion")):
    folder = root / (pid or patient.patient_id)
    write_patient(patient, folder, maps)
    return folder


def _source(folder, name):
    return nib.load(str(folder / f"{name}.nii.gz"))


def _expected_range(window: str, modality: str, source: np.ndarray, brain: np.ndarray) -> tuple[float, float]:
    """The window's (lo, hi), computed here independently of ldm/data/transforms/intensity_window.py."""
    values = np.maximum(source[brain], 0)
    if window == "reference_percentile":
        return tuple(np.percentile(values, [0.5, 99.5]))
    return (0.0, 2500.0) if modality == "adc" else (0.0, 3.0 * float(np.median(values)))


@pytest.mark.parametrize("window", ["reference_percentile", "lesion"])
def test_normalise_then_invert_gives_back_the_source_volume(tmp_path, patients, window):
    raw = tmp_path / "raw"
    folders = [_write(raw, p) for p in patients]
    # One empty slice (no brain) must be skipped and come back as background.
    mask = _source(folders[0], "mask")
    emptied = np.asarray(mask.dataobj).copy()
    emptied[..., 1] = 0
    nib.save(nib.Nifti1Image(emptied, mask.affine, mask.header), str(folders[0] / "mask.nii.gz"))

    summary = preprocess_cohort(raw, tmp_path / "npy", size=SIZE, progress=False, window=window)
    records = load_index(tmp_path / "npy")
    assert sorted(records) == sorted(summary.records) == ["P000", "P001", "P002"]
    assert records["P000"].slice_indices == [0, 2, 3, 4]
    assert {r.intensity_window.name for r in records.values()} == {window}
    assert any(r.crop[a][1] - r.crop[a][0] < r.source_shape[a] for r in records.values() for a in (0, 1))
    assert any(sum(r.pad[a]) > 0 for r in records.values() for a in (0, 1))

    for pid, record in records.items():
        folder = raw / pid
        assert record.source_shape == _source(folder, "dwi").shape
        mri = np.load(record.array_path("mri"))
        stored_mask = np.load(record.array_path("mask"))
        assert mri.dtype == np.float16 and mri.shape == (record.n_slices, 2, *SIZE)
        # stored scaled but unclipped (the augmentation warps them before the clipping, as the reference)
        if window == "reference_percentile":  # the lesion window holds nearly everything, from 0
            assert mri.min() < 0.0 and mri.max() > 1.0
        model_range = np.where(stored_mask[:, None] > 0, np.clip(mri.astype(np.float32), 0, 1) * 2 - 1, -1.0)
        brain = np.asarray(_source(folder, "mask").dataobj) > 0
        inside = np.zeros_like(brain)
        (x0, x1), (y0, y1) = record.crop
        inside[x0:x1, y0:y1, record.slice_indices] = True
        for channel, modality in enumerate(("dwi", "adc")):
            volume = slices_to_volume(model_range[:, channel], record, modality)
            source = _source(folder, modality).get_fdata()
            lo, hi = record.intensity_range(modality)
            assert (lo, hi) == pytest.approx(_expected_range(window, modality, source, brain))
            expected = np.where(brain & inside, np.clip(np.maximum(source, 0), lo, hi), 0.0)
            # float16 storage: rounding on [0, 1] is at most 2^-12, i.e. (hi - lo) / 4096 in physical units
            np.testing.assert_allclose(volume, expected, rtol=0, atol=(hi - lo) / 4096 * 1.01)
            image = volume_to_nifti(volume, record, modality)
            nib.save(image, str(tmp_path / f"{pid}_{modality}.nii.gz"))
            back = nib.load(str(tmp_path / f"{pid}_{modality}.nii.gz"))
            source_image = _source(folder, modality)
            assert back.shape == source_image.shape
            np.testing.assert_array_equal(back.affine, source_image.affine)
            assert back.header.get_zooms() == source_image.header.get_zooms()
            assert back.header.get_xyzt_units() == ("mm", "sec")
        ctp = np.load(record.array_path("ctp"))
        assert ctp.shape == (record.n_slices, N_T, *SIZE)
        ctp_volume = place_slices(ctp.astype(np.float32) * 200.0, record)  # (X, Y, Z, T)
        source_ctp = _source(folder, "ctp").get_fdata()
        # stored in HU / 200 without clipping (float16: relative rounding 2^-11)
        np.testing.assert_allclose(ctp_volume, np.where(inside[..., None], source_ctp, 0),
                                   rtol=2.0 ** -11, atol=200 / 4096 * 1.01)
        expected = np.where(inside[..., None], np.clip(source_ctp, 0, 200), 0)
        np.testing.assert_allclose(np.clip(ctp_volume, 0, 200), expected, atol=200 / 4096 * 1.01)
        lesion = place_slices(np.load(record.array_path("lesion")), record)
        np.testing.assert_array_equal(lesion > 0, (np.asarray(_source(folder, "lesion").dataobj) > 0) & inside)
        assert record.has_lesion == bool(lesion.any())
        assert record.lesion_voxels == [int(v) for v in np.load(record.array_path("lesion")).sum(axis=(1, 2))]

    reference = load_reference(tmp_path / "npy")
    assert reference.n_patients == 3
    assert reference.dwi_range[1] == pytest.approx(np.median([r.dwi_range[1] for r in records.values()]))
    assert json.loads((tmp_path / "npy" / INDEX_FILE).read_text())["size"] == list(SIZE)


def test_reference_slice_rule_drops_a_brain_slice_without_dwi_signal(tmp_path, patients):
    """The reference keeps a slice only if DWI, ADC and CTP each have signal in the brain mask."""
    raw = tmp_path / "raw"
    folder = _write(raw, patients[0])
    dwi = _source(folder, "dwi")
    data = np.asarray(dwi.dataobj).astype(np.float32)
    brain = np.asarray(_source(folder, "mask").dataobj) > 0
    assert brain[..., 2].any()
    data[..., 2] = np.where(brain[..., 2], -5.0, data[..., 2])  # negative DWI counts as 0, as in the reference
    nib.save(nib.Nifti1Image(data, dwi.affine, dwi.header), str(folder / "dwi.nii.gz"))
    ctp = _source(folder, "ctp")
    ctp_data = np.asarray(ctp.dataobj).copy()
    ctp_data[..., 4, :] = 0  # no CTP signal on slice 4
    nib.save(nib.Nifti1Image(ctp_data, ctp.affine, ctp.header), str(folder / "ctp.nii.gz"))

    preprocess_cohort(raw, tmp_path / "reference", size=SIZE, progress=False)
    record = load_index(tmp_path / "reference")[patients[0].patient_id]
    assert record.slice_indices == [0, 1, 3] and record.slice_rule == "reference"
    assert json.loads((tmp_path / "reference" / INDEX_FILE).read_text())["slice_rule"] == "reference"
    assert np.load(record.array_path("mri")).shape[0] == 3
    # sampling puts the dropped slices back as background: the volume keeps every source slice
    volume = place_slices(np.ones((3, *SIZE), np.float32), record)
    assert volume.shape == record.source_shape and not volume[..., 2].any() and not volume[..., 4].any()

    assert main(["--input_dir", str(raw), "--output_dir", str(tmp_path / "brain"), "--size", "32", "32",
                 "--slices", "brain"]) == 0
    record = load_index(tmp_path / "brain")[patients[0].patient_id]
    assert record.slice_indices == [0, 1, 2, 3, 4] and record.slice_rule == "brain"


def test_crop_window_follows_the_brain():
    mask = np.zeros((50, 20, 2), dtype=bool)
    mask[30:44, 5:15] = True  # brain off-centre on a long X axis, inside a short Y axis
    window, cuts = brain_window(mask, (20, 30))
    assert window.crop == ((27, 47), (0, 20)) and window.pad == ((0, 0), (5, 5)) and not cuts
    mask[:, :, 0] = False
    mask[0:3, 5:15, 0] = True
    assert brain_window(mask, (20, 30))[1]  # brain at both ends of X cannot fit 20 voxels


def _bad_cohort(root, good):
    """One good patient and one patient per rejection rule, each with its expected message."""
    _write(root, good, "GOOD")
    expected = {}
    folder = _write(root, good, "NOCTP", maps=("dwi", "adc", "mask", "lesion"))
    expected["NOCTP"] = "patient NOCTP: ctp.nii.gz is missing"
    _write(root, good, "PARTIAL", maps=("ctp", "dwi", "adc", "mask"))
    expected["PARTIAL"] = "patient PARTIAL: incomplete MRI set: lesion.nii.gz missing"
    folder = _write(root, good, "CTP3D")
    nib.save(nib.Nifti1Image(good.ctp[..., 0], good.affine), str(folder / "ctp.nii.gz"))
    expected["CTP3D"] = "patient CTP3D: ctp.nii.gz is 3-D"
    folder = _write(root, good, "T12")
    nib.save(nib.Nifti1Image(good.ctp[..., :12], good.affine), str(folder / "ctp.nii.gz"))
    expected["T12"] = "patient T12: ctp.nii.gz has 12 time points, expected 15"
    folder = _write(root, good, "SHAPE")
    nib.save(nib.Nifti1Image(good.adc[:, :, :-1], good.affine), str(folder / "adc.nii.gz"))
    expected["SHAPE"] = "patient SHAPE: adc.nii.gz has shape"
    folder = _write(root, good, "AFFINE")
    shifted = good.affine.copy()
    shifted[0, 3] += 2.0
    nib.save(nib.Nifti1Image(good.lesion, shifted), str(folder / "lesion.nii.gz"))
    expected["AFFINE"] = "patient AFFINE: lesion.nii.gz affine differs from dwi.nii.gz's by up to 2"
    folder = _write(root, good, "NAN")
    dwi = good.dwi.copy()
    dwi[3, 4, 1] = np.nan
    nib.save(nib.Nifti1Image(dwi, good.affine), str(folder / "dwi.nii.gz"))
    expected["NAN"] = "patient NAN: dwi.nii.gz has 1 NaN/inf values"
    folder = _write(root, good, "EMPTY")
    nib.save(nib.Nifti1Image(np.zeros_like(good.mask), good.affine), str(folder / "mask.nii.gz"))
    expected["EMPTY"] = "patient EMPTY: mask.nii.gz is empty"
    return expected


def test_each_bad_input_is_rejected_with_its_message_and_leaves_no_output(tmp_path, patients):
    raw, out = tmp_path / "raw", tmp_path / "npy"
    expected = _bad_cohort(raw, patients[0])
    (out / "T12").mkdir(parents=True)  # output of an earlier run: stale once the patient fails
    (out / "T12" / "ctp.npy").write_bytes(b"old")
    with pytest.raises(CohortError) as error:
        preprocess_cohort(raw, out, size=SIZE, progress=False)
    failures = error.value.summary.failures
    assert sorted(failures) == sorted(expected)
    for pid, message in expected.items():
        assert failures[pid].startswith(message), failures[pid]
        assert "\n" not in failures[pid]
    assert sorted(p.name for p in out.iterdir()) == ["GOOD", "cohort_report.csv", INDEX_FILE, REFERENCE_FILE]
    index = json.loads((out / INDEX_FILE).read_text())
    assert list(index["patients"]) == ["GOOD"] and sorted(index["failed"]) == sorted(expected)

    # --skip-bad: same output, exit 0; without it exit 1; both print the failures.
    assert main(["--input_dir", str(raw), "--output_dir", str(tmp_path / "cli"), "--size", "32", "32",
                 "--skip-bad", "--workers", "2"]) == 0
    assert sorted(load_index(tmp_path / "cli")) == ["GOOD"]
    assert main(["--input_dir", str(raw), "--output_dir", str(tmp_path / "cli"), "--size", "32", "32"]) == 1
    assert main(["--input_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("how", ["module", "folder path"])
def test_runs_as_a_command(tmp_path, patients, repo_root, how):
    """``python -m ldm.data.preprocessing`` from the repository, or the package folder's path from anywhere."""
    _write(tmp_path / "raw", patients[1])
    entry, cwd = (["-m", "ldm.data.preprocessing"], repo_root) if how == "module" else \
        ([str(Path(repo_root) / "ldm" / "data" / "preprocessing")], tmp_path)
    done = subprocess.run([sys.executable, *entry, "--input_dir", str(tmp_path / "raw"),
                           "--output_dir", str(tmp_path / "npy"), "--size", "32", "32"],
                          cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "preprocessed 1/1 patients" in done.stdout
    assert list(load_index(tmp_path / "npy")) == ["P001"]


def test_derived_brain_mask_matches_the_true_mask(patients):
    p = patients[0]
    derived = derive_brain_mask(p.ctp)
    truth = p.mask.astype(bool)
    dice = 2 * (derived & truth).sum() / (derived.sum() + truth.sum())
    assert dice > 0.95
    air = np.full((8, 8, 2, 4), -1000, dtype=np.int16)
    assert not derive_brain_mask(air).any()


def test_ctp_only_patients_with_and_without_mask_use_the_training_reference(tmp_path, patients):
    raw_train, raw_new = tmp_path / "raw_train", tmp_path / "raw_new"
    for p in patients[:2]:
        _write(raw_train, p)
    _write(raw_new, patients[2], "WITHMASK", maps=("ctp", "mask"))
    _write(raw_new, patients[2], "NOMASK", maps=("ctp",))
    preprocess_cohort(raw_train, tmp_path / "train", size=SIZE, progress=False)

    summary = preprocess_cohort(raw_new, tmp_path / "new", size=SIZE, reference_dir=tmp_path / "train", progress=False)
    records = load_index(tmp_path / "new")
    assert not records["WITHMASK"].has_mri and records["WITHMASK"].mask_source == "given"
    assert records["NOMASK"].mask_source == "derived from ctp"
    assert records["WITHMASK"].dwi_range is None
    assert sorted(p.name for p in (tmp_path / "new" / "NOMASK").iterdir()) == ["ctp.npy", "mask.npy", "record.json"]
    train_reference = load_reference(tmp_path / "train")
    assert load_reference(tmp_path / "new").dwi_range == train_reference.dwi_range
    assert summary.reference.adc_range == train_reference.adc_range

    record = records["WITHMASK"]
    mask = np.load(record.array_path("mask"))
    synthetic = np.where(mask > 0, 0.5, -1.0).astype(np.float32)  # mid-grey wherever there is brain
    with pytest.raises(ValueError, match="patient WITHMASK has no ADC constants"):
        slices_to_volume(synthetic, record, "adc")
    lo, hi = train_reference.adc_range
    for reference in (train_reference, tmp_path / "train", load_index(tmp_path / "train")):
        volume = slices_to_volume(synthetic, record, "adc", reference=reference)
        true_mask = np.asarray(_source(raw_new / "WITHMASK", "mask").dataobj) > 0
        assert volume.shape == record.source_shape
        np.testing.assert_allclose(volume[true_mask], lo + 0.75 * (hi - lo), rtol=1e-5)
        assert (volume[~true_mask] == 0).all()


def test_a_killed_rerun_leaves_no_index_that_disagrees_with_the_folders(tmp_path, patients, monkeypatch):
    """Killed between two patients of a re-run: the old index must not describe republished folders."""
    import ldm.data.preprocessing.pipeline as preprocessing

    raw, out = tmp_path / "raw", tmp_path / "npy"
    for p in patients:
        _write(raw, p)
    preprocess_cohort(raw, out, size=SIZE, progress=False)
    old_ranges = {pid: r.dwi_range for pid, r in load_index(out).items()}
    # the re-run sees other data (the DWI doubled) and is killed after its first patient
    for p in patients:
        image = _source(raw / p.patient_id, "dwi")
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj) * 2.0, image.affine, image.header),
                 str(raw / p.patient_id / "dwi.nii.gz"))
    real, calls = preprocessing.preprocess_patient, []

    def killed_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(preprocessing, "preprocess_patient", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        preprocess_cohort(raw, out, size=SIZE, progress=False)
    assert not (out / INDEX_FILE).exists()  # no index rather than one that disagrees with a folder
    with pytest.raises(FileNotFoundError, match="no index.json"):
        load_index(out)
    (out / ".tmp-old-P000-1-deadbeef").mkdir()  # what a kill inside a publish leaves
    monkeypatch.setattr(preprocessing, "preprocess_patient", real)
    preprocess_cohort(raw, out, size=SIZE, progress=False)
    records = load_index(out)
    assert not list(out.glob(".tmp-*"))
    for pid, record in records.items():
        stored = json.loads((out / pid / "record.json").read_text())
        assert tuple(stored["dwi_range"]) == pytest.approx(record.dwi_range)
        assert record.dwi_range[1] == pytest.approx(2 * old_ranges[pid][1], rel=1e-3)
