"""One reading of every map: copies of one synthetic patient, each with one defect that hospital exports
bring, preprocessed and scored (one prediction for all); preprocessing and evaluation must read every
copy the same way (docs/data.md, "Plausibility checks"). The rows of the table this answers:
a lesion as a probability map, a brain mask as a probability map, lesion voxels outside the brain,
a CTP without its rescale intercept, a CTP on its own grid, no mask.nii.gz, MRI headers 20 mm off the
CTP, truncated or empty files (ground truth and prediction). Two runs into one folder:
tests/test_folder_lock.py."""
import contextlib
import io
import re

import numpy as np
import pytest

from ldm.data.preprocessing.pipeline import preprocess_cohort
from ldm.data.record import load_index
from ldm.data.transforms.resampling import Grid, resample
from ldm.evaluation.volumes import load_ground_truth
from tests.helpers.map_defects import probability_map, save, synthetic, truncate, write
from tests.helpers.scripts import load_script, read_csv

evaluate_script = load_script("evaluate")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("one_reading")
    raw, pred = root / "raw", root / "pred"
    p = synthetic(0)
    brain = p.mask > 0
    outside = np.zeros_like(brain)
    outside[:4, :4, 1:3] = True  # a labelling slip in the corner, no brain there
    assert not (outside & brain).any()
    fine = p.affine @ np.diag([0.5, 0.5, 1.0, 1.0])  # the CTP on a twice finer in-plane grid
    fine_grid = Grid((2 * p.ctp.shape[0] - 1, 2 * p.ctp.shape[1] - 1, p.ctp.shape[2]), fine)
    shifted = p.affine.copy()
    shifted[0, 3] += 20.0  # MRI headers 20 mm off the CTP
    probability_mask = probability_map(brain, sigma=1.5)
    cases = {
        "REF": {}, "PROBLESION": {"lesion": probability_map(p.lesion > 0)},
        "PROBMASK": {"mask": probability_mask}, "BINMASK": {"mask": (probability_mask > 0.5).astype(np.uint8)},
        "OUTSIDE": {"lesion": ((p.lesion > 0) | outside).astype(np.uint8)},
        "OFFSET": {"ctp": p.ctp.astype(np.int32) + 1024},
        "OWNGRID": {"ctp": (resample(p.ctp, p.affine, fine_grid), fine)},
        "NOMASK": {"maps": ("ctp", "dwi", "adc", "lesion")},
        "SHIFTED": {name: (getattr(p, name), shifted) for name in ("dwi", "adc", "mask", "lesion")},
        "TRUNCGT": {}, "EMPTYGT": {}, "TRUNCPRED": {}, "EMPTYPRED": {},
    }
    rng = np.random.default_rng(5)
    predicted = {m: getattr(p, m) * (1 + 0.1 * rng.standard_normal(brain.shape)) * brain for m in ("dwi", "adc")}
    for pid, case in cases.items():
        write(p, raw / pid, **case)
        affine = shifted if pid == "SHIFTED" else p.affine
        for m in ("dwi", "adc"):
            save(predicted[m], pred / pid / f"{m}_sample_0.nii.gz", affine)
    truncate(raw / "TRUNCGT" / "dwi.nii.gz")
    (raw / "EMPTYGT" / "adc.nii.gz").write_bytes(b"")
    truncate(pred / "TRUNCPRED" / "adc_sample_0.nii.gz")
    (pred / "EMPTYPRED" / "dwi_sample_0.nii.gz").write_bytes(b"")

    summary = preprocess_cohort(raw, root / "npy", size=(64, 64), spacing=None, skip_bad=True, progress=False)
    out = root / "eval"
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert evaluate_script.main(["--pred", str(pred), "--gt", str(raw), "--out", str(out), "--n_panels", "0",
                                     "--clinical", "--core_threshold_ml", "5"]) == 0
    (out / "log.txt").write_text(log.getvalue())
    return root, p, summary, load_index(root / "npy"), out


def test_every_note_is_said_once_by_preprocessing_and_once_by_evaluation(cohort):
    root, p, summary, records, out = cohort
    log = (out / "log.txt").read_text()
    said = [w for w in summary.warnings if w.startswith("patient ")]
    assert {w.split(":")[0] for w in said} == {f"patient {pid}" for pid in
                                              ("PROBLESION", "PROBMASK", "OUTSIDE", "OFFSET", "SHIFTED")}
    for note in said:
        assert summary.warnings.count(note) == 1 and log.count(note) == 1, note


def _slices(out, pid, modality="dwi"):
    return [r for r in read_csv(out / "metrics_per_slice.csv") if r["patient_id"] == pid and r["modality"] == modality]


def _per_patient(out, pid, modality="dwi"):
    return next(r for r in read_csv(out / "metrics_per_patient.csv")
                if r["patient_id"] == pid and r["modality"] == modality)


def _lesion_and_brain(out, pid):
    rows = _slices(out, pid)
    return (sum(int(r["lesion_voxels"]) for r in rows), sum(int(r["brain_voxels"]) for r in rows),
            [int(r["slice_index"]) for r in rows])


def _stored(record, name):
    return np.load(record.array_path(name))


def test_a_probability_lesion_is_thresholded_at_half_everywhere_and_said_once(cohort):
    root, p, summary, records, out = cohort
    record = records["PROBLESION"]
    expected = (probability_map(p.lesion > 0) > 0.5) & (p.mask > 0)
    kept = record.slice_indices
    assert sum(record.lesion_voxels) == expected[..., kept].sum()
    lesion, _, slices = _lesion_and_brain(out, "PROBLESION")
    assert slices == kept and lesion == sum(record.lesion_voxels)
    assert 0 < lesion < (probability_map(p.lesion > 0) > 0)[..., kept].sum()  # not every voxel > 0
    notes = [w for w in summary.warnings if w.startswith("patient PROBLESION:")]
    assert len(notes) == 1 and re.match(r"patient PROBLESION: not binary, thresholded at 0.5: lesion.nii.gz \(values "
                                        r"0\.\.1, \d+ voxels neither 0 nor 1, \d+ kept\)", notes[0]), notes


def test_a_probability_brain_mask_is_thresholded_at_half_everywhere(cohort):
    root, p, summary, records, out = cohort
    record = records["PROBMASK"]
    _, brain, slices = _lesion_and_brain(out, "PROBMASK")
    assert slices == record.slice_indices
    assert brain == int(_stored(record, "mask").sum())
    assert brain == int((probability_map(p.mask > 0, sigma=1.5) > 0.5)[..., slices].sum())
    for modality in ("dwi", "adc"):  # scored exactly as the binary mask is
        assert _per_patient(out, "PROBMASK", modality) | {"patient_id": ""} == \
            _per_patient(out, "BINMASK", modality) | {"patient_id": ""}
    clinical = {r["patient_id"]: r for r in read_csv(out / "clinical_per_patient.csv")}
    assert clinical["PROBMASK"]["core_ml_true_adc"] == clinical["BINMASK"]["core_ml_true_adc"]


def test_lesion_voxels_outside_the_brain_are_dropped_everywhere(cohort):
    root, p, summary, records, out = cohort
    assert records["OUTSIDE"].lesion_voxels == records["REF"].lesion_voxels
    assert _lesion_and_brain(out, "OUTSIDE") == _lesion_and_brain(out, "REF")
    for modality in ("dwi", "adc"):
        outside, ref = _per_patient(out, "OUTSIDE", modality), _per_patient(out, "REF", modality)
        assert outside["lesion_mae_pooled"] == ref["lesion_mae_pooled"] != ""
    notes = [w for w in summary.warnings if w.startswith("patient OUTSIDE:")]
    assert notes == [f"patient OUTSIDE: lesion.nii.gz: 32 of {int((p.lesion > 0).sum()) + 32} lesion voxels lie "
                     f"outside the brain mask: dropped"]


def test_a_ctp_without_its_rescale_intercept_is_corrected(cohort):
    root, p, summary, records, out = cohort
    ctp = _stored(records["OFFSET"], "ctp").astype(np.float32)
    np.testing.assert_array_equal(ctp, _stored(records["REF"], "ctp").astype(np.float32))
    brain = _stored(records["OFFSET"], "mask") > 0
    condition = np.clip(ctp, 0, 1)[:, 0][brain]  # the first frame as the model sees it: not one constant
    assert condition.std() > 0.01 and condition.max() < 1.0
    assert load_ground_truth(root / "raw" / "OFFSET").ctp.max() < 1024


def test_a_ctp_on_its_own_grid_and_a_patient_without_mask_are_scored_as_preprocessing_reads_them(cohort):
    root, p, summary, records, out = cohort
    assert records["OWNGRID"].ctp_resampled
    assert _lesion_and_brain(out, "OWNGRID") == _lesion_and_brain(out, "REF")
    assert _per_patient(out, "OWNGRID") | {"patient_id": ""} == _per_patient(out, "REF") | {"patient_id": ""}
    record = records["NOMASK"]
    assert record.mask_source == "derived from ctp"
    _, brain, slices = _lesion_and_brain(out, "NOMASK")
    assert slices == record.slice_indices  # the slice rule on the derived mask, as preprocessing kept them
    per_slice = [int(r["brain_voxels"]) for r in _slices(out, "NOMASK")]
    assert per_slice == [int(v) for v in _stored(record, "mask").reshape(len(slices), -1).sum(axis=1)]
    truth = load_ground_truth(root / "raw" / "NOMASK")
    assert truth.mask_source == "derived from ctp"
    assert truth.lesion.sum() == int((p.lesion > 0)[truth.mask].sum())


def test_mri_headers_off_the_ctp_are_reported_with_the_share_of_brain_without_ctp(cohort):
    root, p, summary, records, out = cohort
    notes = [w for w in summary.warnings if w.startswith("patient SHIFTED:")]
    assert len(notes) == 1
    share = float(re.search(r"is 0 in every frame in ([\d.]+)% of the brain mask", notes[0]).group(1))
    assert 1.0 < share < 50.0 and "register_ctp.py" in notes[0]
    assert records["SHIFTED"].checks["ctp_empty_share"] == pytest.approx(share / 100, abs=1e-3)
    assert load_ground_truth(root / "raw" / "SHIFTED").notes == notes


def test_unreadable_files_leave_their_patient_out_with_the_line_preprocessing_gives(cohort, capsys):
    root, p, summary, records, out = cohort
    assert sorted(summary.failures) == ["EMPTYGT", "TRUNCGT"]
    table = (out / "table1.md").read_text()
    for pid in ("EMPTYGT", "TRUNCGT"):  # the ground truth: preprocessing's line, word for word
        assert f"excluded: patient {pid}" in table or f"patient {pid}:" in table
        assert summary.failures[pid] in table
    assert summary.failures["TRUNCGT"].startswith("patient TRUNCGT: dwi.nii.gz cannot be read")
    assert summary.failures["EMPTYGT"].startswith("patient EMPTYGT: adc.nii.gz cannot be read")
    assert "patient TRUNCPRED: adc_sample_0.nii.gz cannot be read" in table
    assert "patient EMPTYPRED: dwi_sample_0.nii.gz cannot be read" in table
    scored = {r["patient_id"] for r in read_csv(out / "metrics_per_patient.csv")}
    assert scored == set(records) - {"TRUNCPRED", "EMPTYPRED"}
    strict = root / "strict"
    assert evaluate_script.main(["--pred", str(root / "pred"), "--gt", str(root / "raw"), "--out", str(strict),
                                 "--strict"]) == 2
    err = capsys.readouterr().err.replace("\r", "\n").splitlines()
    errors = [e for e in err if e.startswith("evaluate.py: error:")]
    assert errors == [f"evaluate.py: error: {summary.failures['EMPTYGT']}"]
