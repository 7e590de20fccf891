"""The ISLES'24 importer on a small fake ISLES'24 tree made from the synthetic cohort, with the
dataset's file names: one grid per patient at the target spacing, 15 CTP frames, a seeded
patient-level split, the manifest, and incomplete or unusable subjects skipped by name."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ldm.data.synthetic.skull import add_skull
from ldm.data.ingest.isles24 import MANIFEST, import_isles24, split_subjects
from ldm.data.preprocessing.pipeline import preprocess_cohort
from ldm.data.record import load_index
from ldm.data.transforms.resampling import Grid, resample
from ldm.data.synthetic.cohort import generate_patient
from tests.helpers.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
N_FRAMES = 20  # clinical CTP has more frames than the model's 15


def _save(data, affine, path: Path, time_step=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    if time_step:
        image.header.set_zooms((*image.header.get_zooms()[:3], time_step))
    nib.save(image, str(path))


def _subject(root: Path, number: int, patient, n_frames: int = N_FRAMES, skip=()):
    subject = f"sub-stroke{number:04d}"
    base = root / "train" / "derivatives" / subject
    head = add_skull(patient.ctp, patient.mask > 0, patient.info["voxel_mm"], np.random.default_rng(number))
    if "ctp" not in skip:
        _save(head[..., :n_frames], patient.affine, base / "ses-01" / f"{subject}_ses-01_space-ncct_ctp.nii.gz",
              time_step=42.0 / (N_FRAMES - 1))
    (base / "ses-01" / "perfusion-maps").mkdir(parents=True, exist_ok=True)  # present in ISLES'24, not used
    for name, data in (("dwi", patient.dwi), ("adc", patient.adc), ("lesion-msk", patient.lesion)):
        if name not in skip:
            _save(data, patient.affine, base / "ses-02" / f"{subject}_ses-02_space-ncct_{name}.nii.gz")
    return subject


@pytest.fixture(scope="module")
def fake_isles(tmp_path_factory):
    root = tmp_path_factory.mktemp("isles24")
    patients = {}
    for number in range(1, 6):
        p = generate_patient([24, number], size=(64, 64), n_slices=8, n_timepoints=N_FRAMES,
                             lesion_volume_ml=20.0 + 5 * number, lesion_territory="MCA deep")
        patients[_subject(root, number, p)] = p
    _subject(root, 6, patients["sub-stroke0001"], skip=("adc",))
    _subject(root, 7, patients["sub-stroke0002"], n_frames=10)
    # a stray native-space leftover as in the released archive: not matched by the name table
    _save(patients["sub-stroke0001"].lesion, np.eye(4),
          root / "train" / "derivatives" / "sub-stroke0001" / "ses-02" / "sub-stroke0001_ses-02_lesion-msk.nii")
    return root, patients


def test_import_writes_one_grid_per_patient_at_the_target_spacing_with_a_seeded_split(fake_isles, tmp_path, capsys):
    root, patients = fake_isles
    out = tmp_path / "raw"
    assert load_script("import_isles24").main(["--isles_root", str(root), "--output_dir", str(out), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "imported 5 subjects" in printed
    assert "sub-stroke0006: no ses-02/sub-stroke0006_ses-02_space-ncct_adc.nii.gz" in printed
    assert "sub-stroke0007: sub-stroke0007_ses-01_space-ncct_ctp.nii.gz has 10 time points, expected 15" in printed

    manifest = json.loads((out / MANIFEST).read_text())
    expected_split = split_subjects([f"sub-stroke{n:04d}" for n in (1, 2, 3, 4, 5, 7)], (0.7, 0.1, 0.2), 0)
    assert sum(v == "train" for v in expected_split.values()) == 4
    assert sorted(manifest["subjects"]) == sorted(patients) and sorted(manifest["skipped"]) == ["sub-stroke0006",
                                                                                                "sub-stroke0007"]
    for subject, entry in manifest["subjects"].items():
        assert entry["split"] == expected_split[subject]
        assert entry["spacing"] == [1.0, 1.0, 5.0] and entry["frames"]["source"] == N_FRAMES
        assert entry["frames"]["times_source"] == "header pixdim[4]" and len(entry["frames"]["sample_times"]) == 15
        assert entry["sources"]["lesion"].endswith(f"{subject}_ses-02_space-ncct_lesion-msk.nii.gz")
        folder = out / entry["split"] / subject
        assert sorted(p.name for p in folder.iterdir()) == ["adc.nii.gz", "ctp.json", "ctp.nii.gz", "dwi.nii.gz",
                                                            "lesion.nii.gz", "mask.nii.gz"]
        images = {p.name: nib.load(str(p)) for p in folder.glob("*.nii.gz")}
        for image in images.values():
            assert image.shape[:3] == images["dwi.nii.gz"].shape
            np.testing.assert_allclose(image.affine, images["dwi.nii.gz"].affine)
            np.testing.assert_allclose(image.header.get_zooms()[:3], (1.0, 1.0, 5.0), atol=1e-5)
        ctp = np.asarray(images["ctp.nii.gz"].dataobj)
        mask = np.asarray(images["mask.nii.gz"].dataobj) > 0
        assert ctp.shape[3] == 15 and (ctp[~mask] == 0).all() and ctp[mask].max() < 500  # skull-stripped
        truth = resample(patients[subject].mask > 0, patients[subject].affine,
                         Grid(mask.shape, images["dwi.nii.gz"].affine), mask=True)
        assert 2 * (mask & truth).sum() / (mask.sum() + truth.sum()) >= 0.9
        assert json.loads((folder / "ctp.json").read_text())["FrameTimesStart"] == pytest.approx(
            np.linspace(0, 42 * 19 / 19, 15))
    # the same seed gives the same split; the output preprocesses without further resampling
    again = import_isles24(root, tmp_path / "again", progress=False)
    splits = {s: e["split"] for s, e in manifest["subjects"].items()}
    assert {s: e["split"] for s, e in again.imported.items()} == splits
    preprocess_cohort(out / "train", tmp_path / "npy", size=(160, 192), spacing=(1.0, 1.0, 5.0), progress=False)
    records = load_index(tmp_path / "npy")
    assert sorted(records) == manifest["splits"]["train"]
    assert not any(r.resampled or r.ctp_resampled or r.sample_times for r in records.values())
    assert all(r.mask_source == "given" and r.has_mri for r in records.values())


def test_bad_arguments_and_roots(tmp_path, capsys):
    script = load_script("import_isles24")
    with pytest.raises(SystemExit):
        script.main(["--isles_root", str(tmp_path), "--output_dir", str(tmp_path / "o"),
                     "--split", "0.5", "0.5", "0.5"])
    assert script.main(["--isles_root", str(tmp_path), "--output_dir", str(tmp_path / "o")]) == 2
    assert "no derivatives/ folder" in capsys.readouterr().err


def test_import_checks_maps_as_the_patient_loader_does(tmp_path, capsys):
    """An ADC in 10^-3 mm^2/s is converted (one line, in the manifest); a swapped DWI/ADC pair is
    skipped by name; --strict stops at it with exit 2 and no manifest."""
    from dataclasses import replace

    root = tmp_path / "isles"
    p = generate_patient([24, 9], size=(64, 64), n_slices=8, n_timepoints=N_FRAMES, lesion_volume_ml=25.0,
                         lesion_territory="MCA deep")
    _subject(root, 1, p)
    _subject(root, 2, replace(p, adc=p.adc / 1e3))
    _subject(root, 3, replace(p, dwi=p.adc, adc=p.dwi))
    out = tmp_path / "raw"
    script = load_script("import_isles24")
    assert script.main(["--isles_root", str(root), "--output_dir", str(out), "--no_progress",
                        "--split", "1", "0", "0"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("sub-stroke0002: sub-stroke0002_ses-02_space-ncct_adc.nii.gz: brain median 0.") == 1
    assert "is an ADC in 10^-3 mm^2/s: converted to 10^-6 mm^2/s (x 1000)" in printed
    assert ("sub-stroke0003: sub-stroke0003_ses-02_space-ncct_dwi.nii.gz and sub-stroke0003_ses-02_space-ncct_adc"
            ".nii.gz look swapped") in printed
    manifest = json.loads((out / MANIFEST).read_text())
    assert sorted(manifest["subjects"]) == ["sub-stroke0001", "sub-stroke0002"]
    assert manifest["subjects"]["sub-stroke0002"]["checks"]["corrections"]["adc"]["factor"] == 1000.0
    assert "corrections" not in manifest["subjects"]["sub-stroke0001"]["checks"]
    adc = {s: np.asarray(nib.load(str(out / "train" / s / "adc.nii.gz")).dataobj) for s in manifest["subjects"]}
    np.testing.assert_allclose(adc["sub-stroke0002"], adc["sub-stroke0001"], rtol=1e-5, atol=1e-2)
    assert script.main(["--isles_root", str(root), "--output_dir", str(tmp_path / "strict"), "--no_progress",
                        "--strict"]) == 2
    assert "sub-stroke0003" in capsys.readouterr().err and not (tmp_path / "strict" / MANIFEST).exists()
