"""CTP-to-DWI registration (ldm/data/ingest/registration*.py, cohort_registration.py and
scripts/register_ctp.py): a synthetic pair with a known rigid
misregistration of about 8 degrees and 6 mm and different voxel sizes (CT 0.5 x 0.5 x 1 mm, MRI
1 x 1 x 5 mm) is recovered within 1 mm mean displacement over the brain, the CT-space lesion mask
carried along has Dice >= 0.9 with the truth, motion between frames is undone, and the cohort mode
writes the raw layout patient by patient."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ldm.data.preprocessing.pipeline import preprocess_cohort
from ldm.data.record import load_index
from ldm.data.ingest.cohort_registration import register_cohort
from ldm.data.ingest.registration import RegistrationSettings, register_ctp, to_sitk, transform_to_ras
from ldm.data.ingest.registration_files import InputError, register_files
from ldm.data.synthetic.pair import make_registration_pair, rigid_matrix
from tests.helpers.scripts import error_line, load_script

ROOT = Path(__file__).resolve().parents[1]


script = load_script("register_ctp")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One SimpleITK thread: the test machine's two cores are shared."""
    import SimpleITK as sitk

    n = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    yield
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(n)


@pytest.fixture(scope="module")
def pair():
    """CT 128 x 160 x 64 at 0.5 x 0.5 x 1 mm, MRI 72 x 88 x 14 at 1 x 1 x 5 mm, a brain scaled to 0.4
    so that it fits both, the CT header off by a rigid transform."""
    return make_registration_pair(seed=0, n_frames=4)


def _write(folder: Path, pair, with_lesion_mask: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ctp = nib.Nifti1Image(pair.ctp, pair.ctp_affine)
    ctp.header.set_xyzt_units("mm", "sec")
    ctp.header.set_zooms((*ctp.header.get_zooms()[:3], float(pair.frame_times[1] - pair.frame_times[0])))
    nib.save(ctp, str(folder / "ctp.nii.gz"))
    for name, data in (("dwi", pair.dwi), ("adc", pair.adc), ("lesion", pair.mri_lesion.astype(np.uint8))):
        nib.save(nib.Nifti1Image(data, pair.mri_affine), str(folder / f"{name}.nii.gz"))
    if with_lesion_mask:
        nib.save(nib.Nifti1Image(pair.ctp_lesion.astype(np.uint8), pair.ctp_affine), str(folder / "ct_lesion.nii.gz"))
    return folder


def _mean_displacement(estimated_ras: np.ndarray, expected_ras: np.ndarray, brain: np.ndarray, affine) -> float:
    index = np.argwhere(brain)
    points = np.c_[index, np.ones(len(index))] @ np.asarray(affine).T
    return float(np.linalg.norm((points @ estimated_ras.T - points @ expected_ras.T)[:, :3], axis=1).mean())


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_known_rigid_transform_is_recovered_within_1_mm_and_the_lesion_carried_along(pair, tmp_path, capsys):
    import SimpleITK as sitk

    angle = np.degrees(np.arccos((np.trace(pair.true_transform[:3, :3]) - 1) / 2))
    assert 7.0 < angle < 9.0 and 5.0 < np.linalg.norm(pair.true_transform[:3, 3]) < 7.0  # about 8 degrees, 6 mm
    assert pair.ctp.min() < -900 and pair.ctp.max() > 1000  # unstripped: the registration skull-strips
    folder = _write(tmp_path / "in", pair)
    out = tmp_path / "out" / "ctp_reg.nii.gz"
    rc = script.main(["--ctp", str(folder / "ctp.nii.gz"), "--dwi", str(folder / "dwi.nii.gz"), "--out", str(out),
                      "--mask", str(folder / "ct_lesion.nii.gz"), "--mask_out", str(tmp_path / "out" / "lesion.nii.gz"),
                      "--qc", str(tmp_path / "out" / "qc.png")])
    assert rc == 0, capsys.readouterr().err
    registered = nib.load(str(out))
    assert registered.shape == (*pair.dwi.shape, pair.ctp.shape[3])
    np.testing.assert_allclose(registered.affine, pair.mri_affine, atol=1e-5)
    assert registered.header.get_zooms()[3] == pytest.approx(pair.frame_times[1])

    transform = sitk.ReadTransform(str(tmp_path / "out" / "ctp_reg_to_dwi.tfm"))
    error = _mean_displacement(transform_to_ras(transform), np.linalg.inv(pair.true_transform), pair.mri_brain,
                               pair.mri_affine)
    assert error < 1.0, error
    lesion = np.asarray(nib.load(str(tmp_path / "out" / "lesion.nii.gz")).dataobj) > 0
    assert _dice(lesion, pair.mri_lesion) >= 0.9, _dice(lesion, pair.mri_lesion)
    report = json.loads((tmp_path / "out" / "ctp_reg_registration.json").read_text())
    assert report["mutual_information_after"] > report["mutual_information_before"]
    assert report["ctp_brain_mask"] == "derived from the CTP" and report["transform"]["type"] == "AffineTransform"
    assert (tmp_path / "out" / "qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the registered CTP lines up with the MRI: its brain matches the MRI's brain
    frames = registered.get_fdata(dtype=np.float32)
    assert frames.mean(axis=-1)[pair.mri_brain].mean() > 15 and frames.mean(axis=-1)[~pair.mri_brain].min() < -500


def test_motion_between_frames_is_corrected(pair):
    import SimpleITK as sitk

    # frame k of the acquisition is the first frame's head moved by k x (1 degree, 1.5 mm)
    fixed = to_sitk(pair.ctp[..., 0], pair.ctp_affine)
    moved = [pair.ctp[..., 0].astype(np.float32)]
    truths = []
    for k in (1, 2):
        motion = rigid_matrix((0.0, 0.0, 1.0 * k), (1.5 * k, -1.0 * k, 0.5 * k))
        truths.append(motion)
        # tissue at x in frame 0 is at motion(x) in frame k: frame_k(y) = original_k(motion^-1(y))
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        lps = flip @ motion @ flip
        itk = sitk.AffineTransform(3)
        itk.SetMatrix(lps[:3, :3].ravel().tolist())
        itk.SetTranslation(lps[:3, 3].tolist())
        frame = sitk.Resample(to_sitk(pair.ctp[..., k], pair.ctp_affine), fixed, itk.GetInverse(), sitk.sitkLinear,
                              -1024.0, sitk.sitkFloat32)
        moved.append(sitk.GetArrayFromImage(frame).transpose(2, 1, 0))
    ctp = np.stack(moved, axis=-1)
    result = register_ctp(ctp, pair.ctp_affine, pair.dwi, pair.mri_affine, motion=True,
                          settings=RegistrationSettings())
    assert len(result.motion) == 3
    for k, motion in enumerate(truths, start=1):
        # result.motion[k] maps a frame-0 point to where its tissue is in frame k: the motion itself
        error = _mean_displacement(transform_to_ras(result.motion[k]), motion, pair.ctp_brain[::4, ::4],
                                   pair.ctp_affine @ np.diag([4.0, 4.0, 1.0, 1.0]))
        assert error < 0.5, (k, error)
    error = _mean_displacement(transform_to_ras(result.transform), np.linalg.inv(pair.true_transform), pair.mri_brain,
                               pair.mri_affine)
    assert error < 1.0


def _bad_patients(cohort: Path, pair) -> None:
    """P2 with a 3-D CTP, P3 without files."""
    (cohort / "P2").mkdir(parents=True)
    nib.save(nib.Nifti1Image(pair.ctp[..., 0], pair.ctp_affine), str(cohort / "P2" / "ctp.nii.gz"))  # 3-D
    nib.save(nib.Nifti1Image(pair.dwi, pair.mri_affine), str(cohort / "P2" / "dwi.nii.gz"))
    (cohort / "P3").mkdir()


def test_cohort_registration_writes_the_raw_layout_and_reports_bad_patients_by_name(pair, tmp_path):
    cohort = tmp_path / "cohort"
    _write(cohort / "P1", pair, with_lesion_mask=False)
    _bad_patients(cohort, pair)
    out = tmp_path / "registered"
    done, failed = register_cohort(cohort, out, progress=False)
    assert sorted(done) == ["P1"] and sorted(failed) == ["P2", "P3"]
    assert failed["P2"] == "patient P2: ctp.nii.gz is 3-D (128x160x64), expected 4-D"
    assert failed["P3"] == "patient P3: ctp.nii.gz is missing"
    assert sorted(p.name for p in out.iterdir()) == ["P1", "registration.json"]  # nothing half written
    assert sorted(p.name for p in (out / "P1").iterdir()) == ["adc.nii.gz", "ctp.nii.gz", "dwi.nii.gz",
                                                              "lesion.nii.gz", "registration"]
    assert sorted(p.name for p in (out / "P1" / "registration").iterdir()) == ["ctp_to_dwi.tfm", "qc.png",
                                                                               "registration.json"]
    report = json.loads((out / "P1" / "registration" / "registration.json").read_text())
    assert report["out"] == str(out / "P1" / "ctp.nii.gz") and report == done["P1"]
    summary = json.loads((out / "registration.json").read_text())
    assert list(summary["registered"]) == ["P1"] and summary["failed"] == failed
    # preprocessing takes it as it is: every map on the DWI's 1 x 1 x 5 mm grid, no further resampling
    preprocess_cohort(out, tmp_path / "npy", size=(64, 80), spacing=(1.0, 1.0, 5.0), n_timepoints=4, progress=False)
    record = load_index(tmp_path / "npy")["P1"]
    assert not record.resampled and not record.ctp_resampled and record.has_lesion


def test_cohort_mode_command_line_exits_1_naming_bad_patients_and_2_on_a_bad_folder(pair, tmp_path, capsys):
    cohort = tmp_path / "cohort"
    _bad_patients(cohort, pair)
    out = tmp_path / "registered"
    assert script.main(["--cohort", str(cohort), "--output_dir", str(out), "--no_progress"]) == 1
    captured = capsys.readouterr()
    assert "registered 0/2 patients into" in captured.out
    assert "patient P2: ctp.nii.gz is 3-D (128x160x64), expected 4-D" in captured.err
    assert "patient P3: ctp.nii.gz is missing" in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["registration.json"]
    assert script.main(["--cohort", str(tmp_path / "none"), "--output_dir", str(out)]) == 2
    assert "is not a folder" in error_line(capsys.readouterr().err, "register_ctp.py")
    (tmp_path / "empty").mkdir()
    assert script.main(["--cohort", str(tmp_path / "empty"), "--output_dir", str(out)]) == 2
    assert "has no patient folders" in error_line(capsys.readouterr().err, "register_ctp.py")


def test_pair_mode_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), str(tmp_path / "a" / "ctp.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(tmp_path / "a" / "dwi.nii.gz"))
    cases = [(["--ctp", str(tmp_path / "a" / "ctp.nii.gz")], "give --ctp, --dwi and --out"),
             (["--ctp", str(tmp_path / "a" / "ctp.nii.gz"), "--dwi", str(tmp_path / "a" / "dwi.nii.gz"), "--out",
               str(tmp_path / "o.nii.gz")], "ctp.nii.gz is 3-D (4x4x4), expected 4-D"),
             (["--ctp", str(tmp_path / "nope.nii.gz"), "--dwi", str(tmp_path / "a" / "dwi.nii.gz"), "--out",
               str(tmp_path / "o.nii.gz")], "nope.nii.gz: no such file")]
    for args, message in cases:
        with pytest.raises(SystemExit) if "give" in message else _no_raise():
            rc = script.main(args)
            assert rc == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1], err
    assert not (tmp_path / "o.nii.gz").exists()
    # the package raises what the command line reports, before writing anything
    with pytest.raises(InputError, match="ctp.nii.gz is 3-D"):
        register_files(tmp_path / "a" / "ctp.nii.gz", tmp_path / "a" / "dwi.nii.gz", tmp_path / "o.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
