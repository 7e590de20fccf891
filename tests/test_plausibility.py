"""Maps that are what they claim (docs/data.md, "Plausibility checks"): the synthetic cohort passes
every check silently with margin; an ADC in 10^-3 mm^2/s or mm^2/s is converted, a CTP without its
rescale intercept corrected, each with one line and in record.json; a swapped DWI/ADC pair, one
image twice, an ADC of no known unit, a CTP not in HU and a DWI without signal are refused by name
(exit 2 under --strict); evaluation and the clinical read-out read ground truth and predictions
the same way; the cohort report marks what stands out."""
import json

import nibabel as nib
import numpy as np
import pytest

from ldm.data.ingest import plausibility as pl
from ldm.data.ingest.cohort_report import REPORT_FILE, cohort_rows
from ldm.data.synthetic.skull import add_skull
from ldm.data.preprocessing.pipeline import CohortError, main, preprocess_cohort
from ldm.data.record import INDEX_FILE, PatientRecord, load_index
from ldm.data.synthetic.cohort import generate_patient
from ldm.data.ingest.validation import PatientError, PatientVolumes, check_maps, load_patient
from ldm.evaluation.clinical import require_adc_units
from ldm.evaluation.volumes import EvaluationInputError, load_ground_truth
from tests.helpers.map_defects import save, synthetic, write
from tests.helpers.scripts import load_script, read_csv

evaluate_script = load_script("evaluate")


def _margins(checks: dict) -> None:
    """The synthetic cohort's measurements sit well inside every threshold."""
    lo, hi = pl.ADC_MEDIAN_RANGE
    assert 2 * lo <= checks["adc_median"] <= hi / 2
    assert pl.CTP_BASELINE_HU[0] + 10 <= checks["ctp_baseline_hu"] <= pl.CTP_BASELINE_HU[1] / 2
    contrast = checks["dwi_adc_contrast"]
    assert contrast["verdict"] == "as named" and contrast["csf_voxels"] >= 2 * pl.MIN_CSF_VOXELS
    assert contrast["adc_csf_ratio"] >= 1.5 * pl.CSF_BRIGHT and contrast["dwi_csf_ratio"] <= 0.75 / pl.CSF_BRIGHT


def test_the_synthetic_cohort_passes_every_check_silently_with_margin(tmp_path):
    for i in range(3):  # the demo size, as written and read back
        p = generate_patient([0, i], size=(64, 64), patient_id=f"D{i}")
        write(p, tmp_path / p.patient_id)
        volumes = load_patient(tmp_path / p.patient_id)
        assert volumes.notes == [] and "corrections" not in volumes.checks
        np.testing.assert_array_equal(volumes.adc, p.adc)
        np.testing.assert_array_equal(volumes.ctp, p.ctp)
        _margins(volumes.checks)
    p = generate_patient([0, 7], size=(192, 224), patient_id="PAPER")  # the paper's size, in memory
    volumes = PatientVolumes("PAPER", tmp_path, p.ctp, p.dwi, p.adc, p.mask > 0, p.lesion > 0, p.affine,
                             (1.0, 1.0, 5.0), None, 1, 1, "dwi.nii.gz")
    checked = check_maps(volumes)
    assert checked.notes == [] and checked.adc is p.adc and checked.ctp is p.ctp
    _margins(checked.checks)


def test_thresholds_on_constructed_maps():
    # ADC units: a brain median in the tissue range, in any of the three units; nothing in between
    assert pl.adc_unit(850.0) == ("10^-6 mm^2/s", 1.0)
    assert pl.adc_unit(0.85) == ("10^-3 mm^2/s", 1e3)
    assert pl.adc_unit(8.5e-4) == ("mm^2/s", 1e6)
    for median in (85.0, 8.5, 0.085, 5000.0, 0.0):  # 10^-5 mm^2/s, CSF only, a mask on background
        assert pl.adc_unit(median) is None
    # DWI/ADC: CSF (CTP 5 HU) against tissue (CTP 30 HU)
    shape = (10, 10, 2)
    brain = np.ones(shape, bool)
    csf = np.zeros(shape, bool)
    csf[:4, :5] = True  # 40 voxels
    ctp = np.where(csf, 5.0, 30.0)[..., None] + np.arange(4.0)  # varying over 4 frames
    summary = pl.CtpSummary.of(ctp)
    dwi, adc = np.where(csf, 0.2, 1.0) * 400, np.where(csf, 3000.0, 800.0)
    assert pl.diffusion_contrast(dwi, adc, brain, summary).verdict == "as named"
    assert pl.diffusion_contrast(adc, dwi, brain, summary).verdict == "swapped"
    assert pl.diffusion_contrast(dwi, adc * 1.0001 + 1, brain, summary).verdict == "as named"
    assert pl.diffusion_contrast(dwi, dwi * 2.0, brain, summary).verdict == "same image"
    assert pl.diffusion_contrast(dwi, adc, brain, None).verdict == "unclear"  # no CTP: cannot tell
    flat = np.full(shape, 800.0)
    noisy = flat + np.random.default_rng(0).normal(0, 10, shape)
    assert pl.diffusion_contrast(dwi, noisy, brain, summary).verdict == "unclear"  # an ADC without CSF contrast
    few = np.zeros(shape, bool)
    few[0, :pl.MIN_CSF_VOXELS - 1, 0] = True
    ctp_few = np.where(few, 5.0, 30.0)[..., None] + np.arange(4.0)
    assert pl.diffusion_contrast(dwi, adc, brain, pl.CtpSummary.of(ctp_few)).verdict == "unclear"
    with pytest.raises(pl.ImplausibleMap, match="patient X: d.nii and a.nii look swapped"):
        pl.check_diffusion_pair("patient X", ("d.nii", "a.nii"), adc, dwi, brain, summary)
    # CTP baseline: brain tissue, tissue + 1024, anything else
    assert pl.check_ctp_baseline("p", "c", np.full(50, 35.0)) == (None, 35.0)
    correction, baseline = pl.check_ctp_baseline("p", "c", np.full(50, 1059.0))
    assert correction.offset == -1024 and baseline == 35.0
    for value in (400.0, 0.2, -1000.0, 5.0):
        with pytest.raises(pl.ImplausibleMap, match="brain baseline"):
            pl.check_ctp_baseline("p", "c", np.full(50, value))
    assert pl.check_ctp_baseline("p", "c", np.full(pl.MIN_BASELINE_VOXELS - 1, 400.0)) == (None, None)


@pytest.fixture(scope="module")
def defects(tmp_path_factory):
    """One raw split: the same patient as given and with one defect per copy."""
    root = tmp_path_factory.mktemp("defects")
    raw = root / "raw"
    p = synthetic(0)
    head = np.clip(add_skull(p.ctp, p.mask > 0, p.info["voxel_mm"], np.random.default_rng(1)), -1024, 3071)
    cases = {
        "GOOD": {}, "NOMASK": {"maps": ("ctp", "dwi", "adc", "lesion")},
        "MILLI": {"adc": p.adc / 1e3}, "SI": {"adc": p.adc * 1e-6},
        "OFFSET": {"ctp": p.ctp.astype(np.int32) + 1024},
        "OFFSETNOMASK": {"ctp": p.ctp.astype(np.int32) + 1024, "maps": ("ctp", "dwi", "adc", "lesion")},
        "HEADOFFSET": {"ctp": (head.astype(np.int32) + 1024).astype(np.uint16),
                       "maps": ("ctp", "dwi", "adc", "lesion")},
        "UNIT": {"adc": p.adc / 10}, "SWAP": {"dwi": p.adc, "adc": p.dwi}, "SAME": {"dwi": p.adc},
        "HU200": {"ctp": p.ctp / 200.0}, "DARK": {"dwi": np.zeros_like(p.dwi)},
    }
    for pid, case in cases.items():
        case = dict(case)
        write(p, raw / pid, **case)
    return root, raw, p


def test_each_implausible_map_is_corrected_or_refused_by_name(defects):
    root, raw, p = defects
    out = root / "npy"
    with pytest.raises(CohortError) as error:
        preprocess_cohort(raw, out, size=(64, 64), spacing=None, progress=False)
    summary = error.value.summary
    refused = {
        "UNIT": "patient UNIT: adc.nii.gz has a brain median of 83.99: no ADC unit gives that",
        "SWAP": "patient SWAP: dwi.nii.gz and adc.nii.gz look swapped: CSF (found on the CTP",
        "SAME": "patient SAME: dwi.nii.gz and adc.nii.gz are one image",
        "HU200": "patient HU200: ctp.nii.gz: brain baseline (first frame, median in the brain mask) is 0.155 HU",
        "DARK": "patient DARK: dwi.nii.gz has no signal in the brain",
    }
    assert sorted(summary.failures) == sorted(refused)
    for pid, start in refused.items():
        assert summary.failures[pid].startswith(start), summary.failures[pid]
        assert "\n" not in summary.failures[pid] and not (out / pid).exists()
    notes = {pid: [w for w in summary.warnings if w.startswith(f"patient {pid}:")] for pid in summary.records}
    median = float(np.median(p.adc[p.mask > 0]))
    assert notes["MILLI"] == [f"patient MILLI: adc.nii.gz: brain median {median / 1e3:.3g} is an ADC in 10^-3 mm^2/s: "
                              f"converted to 10^-6 mm^2/s (x 1000)"]
    assert notes["SI"] == [f"patient SI: adc.nii.gz: brain median {median / 1e6:.3g} is an ADC in mm^2/s: converted to "
                           f"10^-6 mm^2/s (x 1e+06)"]
    for pid in ("OFFSET", "OFFSETNOMASK", "HEADOFFSET"):
        assert len(notes[pid]) == 1 and "the rescale intercept was not applied; corrected by -1024 HU" in notes[pid][0]
    assert notes["GOOD"] == notes["NOMASK"] == []

    records = load_index(out)
    good, nomask = records["GOOD"], records["NOMASK"]
    assert records["MILLI"].checks["corrections"] == {
        "adc": {"factor": 1000.0, "offset": 0.0,
                "reason": f"brain median {median / 1e3:.3g} is an ADC in 10^-3 mm^2/s"}}
    assert records["OFFSET"].checks["corrections"]["ctp"]["offset"] == -1024.0
    assert json.loads((out / "MILLI" / "record.json").read_text())["checks"]["corrections"]["adc"]["factor"] == 1000
    assert "corrections" not in good.checks and good.checks["dwi_adc_contrast"]["verdict"] == "as named"

    def arrays(record, name):
        return np.load(record.array_path(name)).astype(np.float32)

    for pid in ("MILLI", "SI"):  # converted: the model sees what it sees of the good copy
        assert records[pid].adc_range == pytest.approx(good.adc_range, rel=1e-5)
        np.testing.assert_allclose(arrays(records[pid], "mri"), arrays(good, "mri"), atol=1e-3)
    np.testing.assert_array_equal(arrays(records["OFFSET"], "ctp"), arrays(good, "ctp"))
    assert records["OFFSETNOMASK"].mask_source == "derived from ctp"
    for name in ("ctp", "mask", "mri"):
        np.testing.assert_array_equal(arrays(records["OFFSETNOMASK"], name), arrays(nomask, name))
    truth = np.moveaxis((p.mask > 0)[..., records["HEADOFFSET"].slice_indices], -1, 0)
    derived = arrays(records["HEADOFFSET"], "mask") > 0  # 64 x 64: no crop or pad, the source grid
    assert 2 * (derived & truth).sum() / (derived.sum() + truth.sum()) > 0.9

    rows = {r["patient_id"]: r for r in read_csv(out / REPORT_FILE)}
    assert rows["MILLI"]["corrections"] == "adc x 1000" and rows["OFFSET"]["corrections"] == "ctp -1024"
    assert rows["GOOD"]["corrections"] == "" and rows["GOOD"]["dwi_adc_contrast"] == "as named"
    assert float(rows["MILLI"]["adc_median"]) == pytest.approx(float(rows["GOOD"]["adc_median"]), rel=1e-4)
    assert summary.report.startswith(f"cohort report {out / REPORT_FILE}: 7 patients")


def test_strict_stops_at_the_first_refusal_with_exit_2_and_no_index(defects, capsys):
    root, raw, _ = defects
    out = root / "strict"
    assert main(["--input_dir", str(raw), "--output_dir", str(out), "--size", "64", "64", "--spacing", "native",
                 "--strict"]) == 2
    err = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(err) == 1 and err[0].startswith("error: patient DARK: dwi.nii.gz has no signal")  # first in order
    assert not (out / INDEX_FILE).exists() and not (out / "DARK").exists()
    assert not (out / ".lock").exists()


def test_an_unstripped_head_in_hu_is_not_taken_for_an_offset(tmp_path):
    p = synthetic(1)
    head = add_skull(p.ctp, p.mask > 0, p.info["voxel_mm"], np.random.default_rng(2))
    write(p, tmp_path / "HEAD", maps=("dwi", "adc", "lesion"), ctp=head)
    volumes = load_patient(tmp_path / "HEAD")
    assert volumes.notes == [] and "corrections" not in volumes.checks
    assert volumes.checks["dwi_adc_contrast"]["verdict"] == "as named"


def test_evaluation_reads_ground_truth_and_predictions_the_same_way(tmp_path, capsys):
    p = synthetic(2)
    gt, good, milli, swapped = (tmp_path / n for n in ("gt", "good", "milli", "swapped"))
    write(p, gt / "P1")
    write(p, gt / "P2", adc=p.adc / 1e3)  # ground truth in 10^-3 mm^2/s
    write(p, gt / "P3", dwi=p.adc, adc=p.dwi)  # ground truth swapped
    for pid in ("P1", "P2", "P3"):
        save(p.dwi, good / pid / "dwi_sample_0.nii.gz", p.affine)
        save(p.adc, good / pid / "adc_sample_0.nii.gz", p.affine)
        save(p.dwi, milli / pid / "dwi_sample_0.nii.gz", p.affine)
        save(p.adc / 1e3, milli / pid / "adc_sample_0.nii.gz", p.affine)  # a prediction in 10^-3
        save(p.adc, swapped / pid / "dwi_sample_0.nii.gz", p.affine)
        save(p.dwi, swapped / pid / "adc_sample_0.nii.gz", p.affine)
    out = tmp_path / "out"
    assert evaluate_script.main(["--pred", f"good={good}", f"milli={milli}", "--gt", str(gt), "--out", str(out),
                                 "--n_panels", "0", "--clinical", "--core_threshold_ml", "5"]) == 0
    log = capsys.readouterr().out
    assert log.count("patient P2: adc.nii.gz: brain median 0.") == 1 and "converted to 10^-6 mm^2/s (x 1000)" in log
    assert "patient P3: dwi.nii.gz and adc.nii.gz look swapped" in log and "left out of every run" in log
    assert log.count("run milli: patient P1: adc_sample_0.nii.gz: brain median") == 1
    rows = read_csv(out / "metrics_per_patient.csv")
    assert {r["patient_id"] for r in rows} == {"P1", "P2"}
    for row in rows:  # the same maps in other units: a perfect score everywhere
        assert float(row["mae_brain_mean"]) == pytest.approx(0.0, abs=1e-6), row
    clinical = {(r["run"], r["patient_id"]): r for r in read_csv(out / "clinical_per_patient.csv")}
    assert clinical[("good", "P2")]["core_ml_true_adc"] == clinical[("good", "P1")]["core_ml_true_adc"]
    assert float(clinical[("milli", "P1")]["volume_diff_ml"]) == 0.0
    assert "Ground-truth ADC converted to 10^-6 mm^2/s on reading (its brain median gave the unit): P2 (x 1000)" \
        in (out / "clinical.md").read_text()

    assert evaluate_script.main(["--pred", f"swapped={swapped}", "--gt", str(gt), "--out", str(tmp_path / "o2"),
                                 "--n_panels", "0", "--patients", "P1", "P2"]) == 2  # nothing left to score
    assert "patient P1: dwi_sample_0.nii.gz and adc_sample_0.nii.gz look swapped" in capsys.readouterr().out

    with pytest.raises(EvaluationInputError, match="patient P3: dwi.nii.gz and adc.nii.gz look swapped"):
        load_ground_truth(gt / "P3")
    truth = load_ground_truth(gt / "P2")
    truth.adc = truth.adc / 1e3  # a ground truth that reached the read-out some other way
    with pytest.raises(EvaluationInputError, match="not an ADC in 10.-6 mm.2/s"):
        require_adc_units(truth)


def _record(pid: str, **changes) -> PatientRecord:
    checks = {"dwi_median": 300.0, "adc_median": 850.0, "ctp_baseline_hu": 32.0,
              "dwi_adc_contrast": {"verdict": "as named"}}
    checks.update(changes.pop("checks", {}))
    fields = dict(patient_id=pid, source_shape=(64, 64, 20), affine=np.eye(4), zooms=(1.0, 1.0, 5.0), size=(64, 64),
                  slice_indices=list(range(18)), crop=((0, 64), (0, 64)), pad=((0, 0), (0, 0)), n_timepoints=15,
                  has_mri=True, has_lesion=True, dwi_range=(0.0, 1.0), adc_range=(0.0, 1.0),
                  lesion_voxels=[100] * 18, checks=checks)
    fields.update(changes)
    return PatientRecord(**fields)


def test_the_cohort_report_marks_what_stands_out():
    records = [_record(f"P{i}", checks={"adc_median": 850.0 + 10 * i, "dwi_median": 300.0 + 5 * i,
                                        "ctp_baseline_hu": 30.0 + i}) for i in range(6)]
    records += [_record("THICK", zooms=(1.0, 1.0, 6.0)),
                _record("HIGH", checks={"adc_median": 1900.0, "corrections": {"adc": {"factor": 1000.0, "offset": 0}}}),
                _record("WARM", checks={"ctp_baseline_hu": 75.0})]
    rows = {r["patient_id"]: r for r in cohort_rows(records)}
    assert rows["P0"]["flags"] == "" and rows["P3"]["flags"] == ""
    assert rows["THICK"]["flags"] == "voxel_z outlier (6, cohort median 5)"
    assert rows["HIGH"]["flags"].startswith("adc_median outside normal tissue; adc_median outlier (1900")
    assert rows["HIGH"]["corrections"] == "adc x 1000"
    assert rows["WARM"]["flags"].startswith("ctp_baseline_hu outside normal tissue; ctp_baseline_hu outlier")
    assert rows["P0"]["lesion_ml"] == pytest.approx(18 * 100 * 5 / 1000)


def test_a_ground_truth_without_ctp_needs_its_mask(tmp_path):
    p = synthetic(3)
    write(p, tmp_path / "NOCTP", maps=("dwi", "adc", "lesion"))
    with pytest.raises(EvaluationInputError, match="patient NOCTP: mask.nii.gz is missing and there is no ctp.nii.gz"):
        load_ground_truth(tmp_path / "NOCTP")
    with pytest.raises(PatientError, match="patient NOCTP: ctp.nii.gz is missing"):
        load_patient(tmp_path / "NOCTP")
    nib.save(nib.Nifti1Image(p.mask, p.affine), str(tmp_path / "NOCTP" / "mask.nii.gz"))
    truth = load_ground_truth(tmp_path / "NOCTP")
    assert truth.ctp is None and truth.checks["dwi_adc_contrast"]["verdict"] == "unclear"  # no CTP to find CSF
