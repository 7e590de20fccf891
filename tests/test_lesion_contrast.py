"""Lesion contrast in physical units against hand computations, its rows in evaluate.py's output
(with the ceilings), and the clinical read-out's "not measurable" for a model that cannot write a core."""
import nibabel as nib
import numpy as np
import pytest

from ldm.evaluation.lesion_contrast import (kept_fractions, lesion_contrast, per_patient, summarise,
                                            through_window)
from tests.helpers.evaluation_files import AFFINE, SHAPE, save
from tests.helpers.scripts import load_script, read_csv

evaluate_script = load_script("evaluate")
VOXEL_ML = 5.0 / 1000.0  # 1 x 1 x 5 mm


def _patient():
    brain = np.zeros(SHAPE, dtype=bool)
    brain[3:21, 4:24, 0:4] = True
    lesion = np.zeros(SHAPE, dtype=bool)
    lesion[6:9, 6:10, 1] = True  # 12 voxels on slice 1
    lesion[6:8, 6:8, 2] = True  # 4 voxels on slice 2
    dwi = np.where(brain, 100.0, 0.0)
    dwi[lesion] = 170.0
    adc = np.where(brain, 800.0, 0.0)
    adc[lesion] = 500.0
    adc[6, 6, 1] = 700.0  # one lesion voxel above the core threshold
    adc[15, 15, 3] = 600.0  # a core voxel outside the lesion, on a slice without lesion
    return dwi, adc, lesion, brain


def test_measures_by_hand():
    dwi, adc, lesion, brain = _patient()
    row = lesion_contrast(dwi, adc, lesion, brain, np.arange(4), VOXEL_ML)
    assert row["lesion_voxels"] == 16
    assert row["dwi_lesion_ratio"] == pytest.approx(1.7)  # 170 / 100
    assert row["adc_lesion_mean"] == pytest.approx((15 * 500 + 700) / 16)
    normal = (2 * (18 * 20) - 16) * 800 / (2 * (18 * 20) - 16)  # slices 1 and 2 outside the lesion
    assert row["adc_lesion_ratio"] == pytest.approx(((15 * 500 + 700) / 16) / normal)
    assert row["lesion_core_share"] == pytest.approx(15 / 16)
    assert row["core_ml"] == pytest.approx(16 * VOXEL_ML)  # 15 lesion voxels + the one outside
    # only the scored slices count: without slice 2 the lesion has 12 voxels
    assert lesion_contrast(dwi, adc, lesion, brain, np.array([0, 1, 3]), VOXEL_ML)["lesion_voxels"] == 12
    empty = lesion_contrast(dwi, adc, np.zeros_like(lesion), brain, np.arange(4), VOXEL_ML)
    assert empty["dwi_lesion_ratio"] is None and empty["lesion_voxels"] == 0


def test_kept_fractions_windowing_and_summary():
    truth = {"dwi_lesion_ratio": 1.6, "lesion_core_share": 0.8}
    kept = kept_fractions({"dwi_lesion_ratio": 1.3, "lesion_core_share": 0.2}, truth)
    assert kept["dwi_excess_kept"] == pytest.approx(0.5) and kept["core_share_kept"] == pytest.approx(0.25)
    assert kept_fractions({"dwi_lesion_ratio": None}, truth)["dwi_excess_kept"] is None
    assert kept_fractions({"lesion_core_share": 0.2}, {"lesion_core_share": 0.0})["core_share_kept"] is None
    np.testing.assert_array_equal(through_window(np.array([-5.0, 300.0, 900.0, 3000.0]), (650.0, 2500.0)),
                                  [650.0, 650.0, 900.0, 2500.0])
    rows = [{"run": "a", "patient_id": "P1", "sample": k, "lesion_voxels": 10, "dwi_lesion_ratio": r,
             "adc_lesion_mean": 500.0, "adc_lesion_ratio": 0.6, "lesion_core_share": s, "core_ml": 1.0,
             "dwi_excess_kept": e, "core_share_kept": None} for k, (r, s, e) in enumerate([(1.2, 0.0, 0.2), (1.4, 0.5, 0.6)])]
    rows.append({"run": "a", "patient_id": "P2", "sample": 0, "lesion_voxels": 0, "core_ml": 3.0})
    merged = per_patient(rows)
    assert merged[0]["dwi_lesion_ratio"] == pytest.approx(1.3) and merged[0]["n_samples"] == 2
    s = summarise(merged)
    assert s["n_lesion_patients"] == 1 and s["n_with_lesion_core"] == 1
    assert s["core_ml"] == pytest.approx(2.0) and s["median_dwi_excess_kept"] == pytest.approx(0.4)


def _write_cohort(root):
    dwi, adc, lesion, brain = _patient()
    gt = root / "gt" / "P001"
    for name, array in (("dwi", dwi), ("adc", adc), ("lesion", lesion), ("mask", brain)):
        save(array, gt / f"{name}.nii.gz")
    return root / "gt", dwi, adc, brain


def _write_prediction(folder, dwi, adc, adc_range=None):
    folder.mkdir(parents=True, exist_ok=True)
    save(dwi, folder / "dwi_sample_0.nii.gz")
    image = nib.Nifti1Image(np.asarray(adc, dtype=np.float32), AFFINE)
    if adc_range is not None:  # what the sampler stores: the range its model could write
        image.header["cal_min"], image.header["cal_max"] = adc_range
    nib.save(image, str(folder / "adc_sample_0.nii.gz"))


def test_evaluate_reports_contrast_ceilings_and_a_core_that_is_not_measurable(tmp_path, capsys):
    gt_dir, dwi, adc, brain = _write_cohort(tmp_path)
    faint = tmp_path / "faint" / "P001"  # lesion at half its DWI excess, ADC clipped at 650 by its window
    _write_prediction(faint, np.where(dwi > 100, 135.0, dwi), np.where(brain, np.maximum(adc, 650.0), 0.0),
                      adc_range=(650.0, 1500.0))
    recon = tmp_path / "recon" / "P001"
    _write_prediction(recon, dwi, adc, adc_range=(0.0, 2500.0))
    out = tmp_path / "out"
    rc = evaluate_script.main(["--pred", f"faint={faint.parent}", "--reconstruction", str(recon.parent),
                               "--gt", str(gt_dir), "--out", str(out), "--n_panels", "1", "--clinical",
                               "--slices", "brain", "--bootstrap", "200"])
    assert rc == 0
    rows = {r["run"]: r for r in read_csv(out / "lesion_contrast.csv")}
    assert float(rows["faint"]["dwi_lesion_ratio"]) == pytest.approx(1.35)
    assert float(rows["faint"]["dwi_excess_kept"]) == pytest.approx(0.5)
    assert float(rows["faint"]["lesion_core_share"]) == 0.0
    assert float(rows["VQGAN reconstruction"]["core_share_kept"]) == pytest.approx(1.0)
    assert float(rows["ground truth (training window)"]["dwi_lesion_ratio"]) == pytest.approx(1.7)
    table = (out / "table1.md").read_text()
    assert "| VQGAN reconstruction (ceiling) |" in table and "| ground truth (training window) |" in table
    assert "VQGAN reconstruction" not in (out / "paired_differences.csv").read_text()  # a ceiling is not compared
    clinical = {r["run"]: r for r in read_csv(out / "clinical_per_patient.csv")}
    assert clinical["faint"]["core_measurable"] == "False" and clinical["faint"]["core_ml_synth"] == ""
    assert clinical["VQGAN reconstruction"]["core_measurable"] == "True"
    assert float(clinical["VQGAN reconstruction"]["core_ml_synth"]) == pytest.approx(16 * VOXEL_ML)
    md = (out / "clinical.md").read_text()
    assert "faint: core not measurable for 1 patient(s) (P001)" in md
    assert (out / "panels" / "P001.png").is_file()
