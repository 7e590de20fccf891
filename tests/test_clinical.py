"""Clinical read-out (evaluate.py --clinical): a constructed cohort whose every number is known by
hand (blocks of known size below the ADC threshold on 1 x 1 x 5 mm voxels, predictions shifted or
resized by known voxel counts), the statistics against textbook examples, the uncertainty read-out,
and bad input."""
import math

import nibabel as nib
import numpy as np
import pytest

from ldm.evaluation.agreement import (
    anova_mean_squares,
    bland_altman,
    cohen_kappa,
    correlations,
    decision_table,
    icc_2_1,
)
from ldm.evaluation.clinical import cluster_voxels, dice, segment_core, voxel_volume_ml
from ldm.evaluation.clinical_report import collect
from ldm.evaluation.uncertainty import error_by_std_decile, std_error_spearman
from tests.helpers.evaluation_files import AFFINE, SHAPE, save
from tests.helpers.scripts import error_line as script_error_line
from tests.helpers.scripts import load_script, read_csv

evaluate_script = load_script("evaluate")


def error_line(stderr: str) -> str:
    return script_error_line(stderr, "evaluate.py")

VOXEL_ML = 1.0 * 1.0 * 5.0 / 1000.0  # AFFINE has 1 x 1 x 5 mm voxels: 0.005 ml
BRAIN = (slice(1, 23), slice(1, 27), slice(1, 5))
# patient: (true-ADC core block, synthesised core block, lesion block), blocks (x0, x1, y0, y1, z0, z1)
CASES = {
    "P001": ((4, 8, 5, 10, 2, 4), (5, 9, 5, 10, 2, 4), (4, 8, 5, 10, 2, 4)),      # 40 vox, shifted 1 in x
    "P002": ((4, 10, 5, 10, 2, 4), (4, 12, 5, 10, 2, 4), (4, 10, 5, 10, 2, 4)),   # 60 vox, synth 80 vox
    "P003": (None, None, None),                                                   # no lesion, no core
    "P004": ((4, 14, 5, 10, 2, 4), (4, 10, 5, 10, 2, 4), (4, 14, 5, 10, 2, 5)),   # 100 vox, synth 60, lesion 150
    "P005": ((2, 22, 5, 10, 2, 4), (2, 22, 7, 12, 2, 4), (2, 22, 5, 10, 2, 4)),   # 200 vox, shifted 2 in y
}
TRUE_ML = {"P001": 0.2, "P002": 0.3, "P003": 0.0, "P004": 0.5, "P005": 1.0}
SYNTH_ML = {"P001": 0.2, "P002": 0.4, "P003": 0.0, "P004": 0.3, "P005": 1.0}
LESION_ML = {"P001": 0.2, "P002": 0.3, "P003": 0.0, "P004": 0.75, "P005": 1.0}
DICE_TRUE = {"P001": 2 * 30 / 80, "P002": 2 * 60 / 140, "P003": 1.0, "P004": 2 * 60 / 160, "P005": 2 * 120 / 400}
DICE_LESION = {**DICE_TRUE, "P004": 2 * 60 / 210}
REL_PCT = {"P001": 0.0, "P002": 100 * 0.1 / 0.3, "P003": None, "P004": 100 * 0.2 / 0.5, "P005": 0.0}
DECISION_ML = 0.35  # the cohort is tiny: the decision threshold is scaled down from DEFUSE 3's 70 ml


def block(b):
    out = np.zeros(SHAPE, bool)
    if b is not None:
        out[b[0]:b[1], b[2]:b[3], b[4]:b[5]] = True
    return out


def write_known_cohort(root):
    """Ground truth, a 'shifted' run with the CASES' synthesised cores and a 'perfect' run (the true ADC)."""
    rng = np.random.default_rng(0)
    gt_dir, shifted, perfect = root / "gt", root / "shifted", root / "perfect"
    for pid, (true_b, synth_b, lesion_b) in CASES.items():
        mask = np.zeros(SHAPE, bool)
        mask[BRAIN] = True
        # tissue ADC 700-1500, core 300-600 (10^-6 mm^2/s); 0 outside the brain: below 620, must not count
        adc, synth = (np.where(mask, rng.uniform(700, 1500, SHAPE), 0.0) for _ in range(2))
        adc[block(true_b)] = rng.uniform(300, 600, block(true_b).sum())
        synth[block(synth_b)] = rng.uniform(300, 600, block(synth_b).sum())
        dwi = rng.uniform(200, 800, SHAPE) * mask
        for name, arr in dict(dwi=dwi, adc=adc, mask=mask, lesion=block(lesion_b)).items():
            save(arr, gt_dir / pid / f"{name}.nii.gz")
        for run, pred in ((shifted, synth), (perfect, adc)):
            save(dwi, run / pid / "dwi_sample_0.nii.gz")
            save(pred, run / pid / "adc_sample_0.nii.gz")
    return gt_dir, shifted, perfect


def hand_statistics():
    """Bland-Altman, Pearson, Spearman, ICC(2,1) and kappa of TRUE_ML / SYNTH_ML worked out by hand."""
    # differences synth - true: 0, 0.1, 0, -0.2, 0 -> mean -0.02; squared deviations sum to 0.048
    mean, sd = -0.02, math.sqrt(0.048 / 4)
    # means true 0.4, synth 0.38; sum dx dy = 0.55, sum dx^2 = 0.58, sum dy^2 = 0.568
    pearson = 0.55 / math.sqrt(0.58 * 0.568)
    # ranks true (P001..P005) 2 3 1 4 5, synth 2 4 1 3 5: sum d^2 = 2 -> 1 - 6 * 2 / (5 * 24)
    spearman = 1 - 6 * 2 / (5 * 24)
    # grand mean 0.39; BMS = 2 * 0.562 / 4 = 0.281, JMS = 5 * 0.0002 = 0.001, EMS = 0.024 / 4 = 0.006
    icc = (0.281 - 0.006) / (0.281 + 0.006 + 2 * (0.001 - 0.006) / 5)
    # core < 0.35 ml: both P001 P003, true only P002, synth only P004, neither P005
    p_o, p_e = 3 / 5, (3 / 5) * (3 / 5) + (2 / 5) * (2 / 5)
    return dict(mean=mean, sd=sd, lower=mean - 1.96 * sd, upper=mean + 1.96 * sd, pearson=pearson,
                spearman=spearman, icc=icc, kappa=(p_o - p_e) / (1 - p_e))


def test_constructed_case_volumes_dice_and_agreement_exactly(tmp_path):
    gt_dir, shifted, perfect = write_known_cohort(tmp_path)
    patients = sorted(CASES)
    results = collect({"shifted": (shifted, patients), "perfect": (perfect, patients)}, gt_dir,
                      core_threshold_ml=DECISION_ML)
    rows = {(r["run"], r["patient_id"]): r for r in results.per_patient}
    assert len(rows) == 10 and all(r["sample"] == 0 for r in results.per_patient)
    exact = dict(rel=1e-12, abs=1e-12)
    for pid in patients:
        r = rows[("shifted", pid)]
        assert r["voxel_ml"] == pytest.approx(VOXEL_ML, **exact)
        assert r["core_ml_true_adc"] == pytest.approx(TRUE_ML[pid], **exact)
        assert r["core_ml_synth"] == pytest.approx(SYNTH_ML[pid], **exact)
        assert r["lesion_ml"] == pytest.approx(LESION_ML[pid], **exact)
        assert r["volume_diff_ml"] == pytest.approx(SYNTH_ML[pid] - TRUE_ML[pid], **exact)
        assert r["abs_volume_error_ml"] == pytest.approx(abs(SYNTH_ML[pid] - TRUE_ML[pid]), **exact)
        assert r["dice_synth_true_adc"] == pytest.approx(DICE_TRUE[pid], **exact)
        assert r["dice_synth_lesion"] == pytest.approx(DICE_LESION[pid], **exact)
        if REL_PCT[pid] is None:
            assert r["rel_volume_error_pct"] is None  # true core 0 ml: undefined, not inf
        else:
            assert r["rel_volume_error_pct"] == pytest.approx(REL_PCT[pid], **exact)
        assert r["core_below_threshold_synth"] == (SYNTH_ML[pid] < DECISION_ML)
        p = rows[("perfect", pid)]
        assert p["volume_diff_ml"] == 0 and p["dice_synth_true_adc"] == 1.0
    assert rows[("shifted", "P004")]["dice_true_adc_lesion"] == pytest.approx(2 * 100 / 250, **exact)

    hand = hand_statistics()
    a, b = results.agreement
    assert a["run"] == "shifted" and a["n_patients"] == 5 and a["samples_used"] == "0"
    assert a["mean_diff_ml"] == pytest.approx(hand["mean"], **exact)
    assert a["sd_diff_ml"] == pytest.approx(hand["sd"], **exact)
    assert a["loa_lower_ml"] == pytest.approx(hand["lower"], **exact)
    assert a["loa_upper_ml"] == pytest.approx(hand["upper"], **exact)
    assert a["pearson_r"] == pytest.approx(hand["pearson"], **exact)
    assert a["spearman_rho"] == pytest.approx(hand["spearman"], **exact)
    assert a["icc_2_1"] == pytest.approx(hand["icc"], **exact) and hand["icc"] == pytest.approx(55 / 57)
    assert (a["n_both_below"], a["n_true_below_only"], a["n_synth_below_only"], a["n_both_above"]) == (2, 1, 1, 1)
    assert a["kappa"] == pytest.approx(hand["kappa"], **exact) and hand["kappa"] == pytest.approx(1 / 6)
    assert a["percent_agreement"] == pytest.approx(60.0, **exact)
    assert a["median_rel_error_pct"] == pytest.approx((0 + 100 * 0.1 / 0.3) / 2, **exact)  # of 0, 0, 33.3, 40
    assert a["n_rel_error_undefined"] == 1
    assert a["mean_dice_synth_true_adc"] == pytest.approx(np.mean(list(DICE_TRUE.values())), **exact)
    # the perfect run: no difference at all
    assert b["mean_diff_ml"] == 0 and b["loa_lower_ml"] == 0 and b["loa_upper_ml"] == 0
    assert b["icc_2_1"] == pytest.approx(1.0) and b["kappa"] == pytest.approx(1.0)
    assert b["pearson_r"] == pytest.approx(1.0)
    assert results.uncertainty == []


def test_clinical_cli_writes_every_file_with_the_known_numbers(tmp_path, capsys):
    gt_dir, shifted, perfect = write_known_cohort(tmp_path)
    rng = np.random.default_rng(3)
    gt_adc = {}
    for pid in ("P001", "P002"):  # ADC mean/std maps for two patients of one run: std = 2 |error|
        adc = np.asarray(nib.load(str(gt_dir / pid / "adc.nii.gz")).dataobj, dtype=np.float64)
        mask = np.asarray(nib.load(str(gt_dir / pid / "mask.nii.gz")).dataobj) > 0
        error = rng.normal(0, 30, SHAPE) * mask
        save(adc + error, shifted / pid / "adc_mean.nii.gz")
        save(2 * np.abs(error), shifted / pid / "adc_std.nii.gz")
        stored = np.asarray(adc + error, np.float32).astype(np.float64)  # the mean map as written (float32)
        width = np.subtract(*np.percentile(adc[mask], [99.5, 0.5]))  # the ground truth's percentile window
        gt_adc[pid] = (mask, np.abs(stored - adc) / width)
    out = tmp_path / "out"
    rc = evaluate_script.main(["--pred", f"shifted={shifted}", f"perfect={perfect}", "--gt", str(gt_dir),
                               "--out", str(out), "--n_panels", "0", "--clinical", "--core_threshold_ml",
                               str(DECISION_ML), "--window", "reference_percentile"])
    assert rc == 0
    for name in ("clinical_per_patient.csv", "clinical_agreement.csv", "clinical.md", "table1.md"):
        assert (out / name).is_file(), name
    for name in ("bland_altman.png", "uncertainty.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    rows = {(r["run"], r["patient_id"]): r for r in read_csv(out / "clinical_per_patient.csv")}
    for pid in CASES:
        r = rows[("shifted", pid)]
        assert float(r["core_ml_synth"]) == pytest.approx(SYNTH_ML[pid], rel=1e-6)
        assert float(r["core_ml_true_adc"]) == pytest.approx(TRUE_ML[pid], rel=1e-6)
        assert float(r["dice_synth_true_adc"]) == pytest.approx(DICE_TRUE[pid], rel=1e-5)
    assert rows[("shifted", "P003")]["rel_volume_error_pct"] == ""  # undefined: an empty cell, not nan
    hand = hand_statistics()
    agreement = {r["run"]: r for r in read_csv(out / "clinical_agreement.csv")}
    a = agreement["shifted"]
    for key, value in (("loa_lower_ml", hand["lower"]), ("loa_upper_ml", hand["upper"]),
                       ("kappa", hand["kappa"]), ("icc_2_1", hand["icc"]), ("spearman_rho", hand["spearman"])):
        assert float(a[key]) == pytest.approx(value, rel=1e-5), key

    md = (out / "clinical.md").read_text()
    assert "nan" not in md.lower() and "inf" not in md.lower().replace("infarct", "")
    line = next(x for x in md.splitlines() if x.startswith("| shifted |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "5" and cells[4] == f"{hand['mean']:.2f} [{hand['lower']:.2f}, {hand['upper']:.2f}]"
    assert cells[7] == f"{hand['icc']:.3f}" and cells[10] == "3/5" and cells[11] == f"{hand['kappa']:.3f}"
    assert "| true < 0.35 ml | 2 | 1 |" in md and "| true ≥ 0.35 ml | 1 | 1 |" in md
    assert "| perfect |" in md and "RAPID" in md and "DEFUSE 3" in md and "not clinical evidence" in md

    unc = {(r["run"], r["modality"], r["patient_id"]): r for r in read_csv(out / "uncertainty.csv")}
    assert set(unc) == {("shifted", "adc", "P001"), ("shifted", "adc", "P002"), ("shifted", "adc", "all")}
    pooled = unc[("shifted", "adc", "all")]
    assert pooled["n_patients"] == "2" and float(pooled["spearman_std_abs_error"]) == pytest.approx(1.0, abs=1e-4)
    # error by std decile by hand: errors in window units, deciles of the pooled brain voxels
    err = np.concatenate([gt_adc[p][1][gt_adc[p][0]] for p in ("P001", "P002")])
    chunks = np.array_split(np.sort(err), 10)
    for d in (1, 5, 10):
        assert float(pooled[f"abs_error_d{d}"]) == pytest.approx(chunks[d - 1].mean(), rel=1e-4)
    assert "Spearman ρ" in md and "| shifted | ADC | 2 |" in md
    assert "clinical read-out:" in capsys.readouterr().out

    # the same folder without std maps: no stale uncertainty files remain
    rc = evaluate_script.main(["--pred", f"perfect={perfect}", "--gt", str(gt_dir), "--out", str(out),
                               "--n_panels", "0", "--clinical"])
    assert rc == 0 and not (out / "uncertainty.csv").exists() and not (out / "uncertainty.png").exists()
    assert "| true < 70 ml | 5 | 0 |" in (out / "clinical.md").read_text()  # the default decision: DEFUSE 3


def test_icc_2_1_matches_shrout_and_fleiss_table_2():
    # Shrout & Fleiss 1979, Table 2: 6 targets, 4 judges; Table 3 gives BMS 11.24, WMS 6.26, JMS 32.49,
    # EMS 1.02 and ICC(1,1) = .17, ICC(2,1) = .29, ICC(3,1) = .71
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    ms = anova_mean_squares(ratings)
    assert [round(ms[k], 2) for k in ("BMS", "WMS", "JMS", "EMS")] == [11.24, 6.26, 32.49, 1.02]
    assert round(icc_2_1(ratings), 2) == 0.29
    assert round((ms["BMS"] - ms["WMS"]) / (ms["BMS"] + 3 * ms["WMS"]), 2) == 0.17  # ICC(1,1): the ANOVA is right
    assert round((ms["BMS"] - ms["EMS"]) / (ms["BMS"] + 3 * ms["EMS"]), 2) == 0.71  # ICC(3,1)
    assert icc_2_1(np.ones((4, 2))) is None and icc_2_1(np.ones((1, 2))) is None
    assert icc_2_1(np.array([[0.0, 1.0], [1.0, 0.0]])) is None  # 0 / 0
    assert icc_2_1(np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])) == 0.0  # targets alike, raters differ


def test_kappa_bland_altman_and_correlations_by_hand():
    # 50 cases: 20 both yes, 5 reference only, 10 test only, 15 both no -> p_o 0.7, p_e 0.5, kappa 0.4
    table = {"both": 20, "reference_only": 5, "test_only": 10, "neither": 15}
    k = cohen_kappa(table)
    assert k["percent_agreement"] == pytest.approx(70.0) and k["chance_agreement"] == pytest.approx(0.5)
    assert k["kappa"] == pytest.approx(0.4)
    reference = [True] * 25 + [False] * 25
    test = [True] * 20 + [False] * 5 + [True] * 10 + [False] * 15
    assert decision_table(reference, test) == table
    same = cohen_kappa(decision_table([True] * 4, [True] * 4))
    assert same["kappa"] is None and same["percent_agreement"] == 100.0  # p_e = 1: undefined
    assert cohen_kappa(decision_table([], []))["kappa"] is None

    ba = bland_altman([3.0, 5.0, 10.0], [1.0, 5.0, 7.0])  # differences 2, 0, 3: mean 5/3, SD sqrt(7/3)
    assert ba["mean_diff"] == pytest.approx(5 / 3) and ba["sd_diff"] == pytest.approx(math.sqrt(7 / 3))
    assert ba["loa_upper"] - ba["loa_lower"] == pytest.approx(2 * 1.96 * math.sqrt(7 / 3))
    one = bland_altman([2.0], [1.0])
    assert one["mean_diff"] == 1.0 and one["sd_diff"] is None and one["loa_lower"] is None
    assert correlations([1, 2], [2, 1])["pearson_r"] is None  # two points
    assert correlations([1, 2, 3], [5, 5, 5])["spearman_rho"] is None  # constant
    assert correlations([1, 2, 3], [1, 3, 2])["spearman_rho"] == pytest.approx(0.5)


def test_core_segmentation_cluster_filter_voxel_size_and_dice():
    adc = np.full((10, 10, 4), 800.0)
    brain = np.ones(adc.shape, bool)
    adc[2:5, 2:5, 1:3] = 500.0      # 18 voxels
    adc[8, 8, 3] = 100.0            # one isolated voxel
    adc[7, 7, 2] = 610.0            # touches it by a corner only (26-connectivity): a 2-voxel cluster
    adc[0, 0, 0] = 620.0            # at the threshold: not core (strictly below)
    brain[2, 2, 1] = False          # outside the brain: not core
    assert segment_core(adc, brain).sum() == 17 + 2
    assert segment_core(adc, brain, min_cluster_voxels=3).sum() == 17
    assert segment_core(adc, brain, min_cluster_voxels=2).sum() == 19
    assert segment_core(adc, brain, threshold=600.0).sum() == 17 + 1
    assert cluster_voxels(None, 0.005) == 0 and cluster_voxels(0.01, 0.005) == 2 and cluster_voxels(0.011, 0.005) == 3

    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), AFFINE)
    assert voxel_volume_ml(image.header) == pytest.approx(0.005)
    oblique = np.diag([0.9, 0.9, 3.0, 1.0])
    oblique[:3, :3] = oblique[:3, :3] @ np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0],
                                                  [0, 0, 1]])
    assert voxel_volume_ml(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), oblique).header) == pytest.approx(
        0.9 * 0.9 * 3.0 / 1000, rel=1e-6)
    empty = np.zeros((3, 3), bool)
    one = empty.copy()
    one[1, 1] = True
    assert dice(empty, empty) == 1.0 and dice(one, empty) == 0.0 and dice(one, one) == 1.0


def test_uncertainty_statistics():
    std = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2])
    err = std ** 2
    assert std_error_spearman(std, err) == pytest.approx(1.0)
    assert std_error_spearman(std, -err) == pytest.approx(-1.0)
    assert std_error_spearman(np.zeros(5), np.arange(5)) is None
    bins = error_by_std_decile(std[::-1], err[::-1], n_bins=4)  # sorted by std, whatever the input order
    assert [b["n"] for b in bins] == [3, 3, 3, 3]
    assert [b["mean_abs_error"] for b in bins] == pytest.approx([np.mean(err[i:i + 3]) for i in range(0, 12, 3)])
    few = error_by_std_decile(std[:3], err[:3])
    assert [b["n"] for b in few] == [1, 1, 1] + [0] * 7 and few[-1]["mean_abs_error"] is None


def test_bad_clinical_inputs_are_one_line_and_leave_no_clinical_output(tmp_path, capsys):
    gt_dir, shifted, perfect = write_known_cohort(tmp_path)
    cases = [
        ("adc_std.nii.gz", -np.ones(SHAPE), "patient P002: adc_std.nii.gz holds negative values"),
        ("adc_std.nii.gz", np.ones((24, 28, 6)), "patient P002: adc_std.nii.gz has shape (24, 28, 6)"),
    ]
    for name, array, message in cases:
        save(array, shifted / "P002" / name)
        save(np.ones(SHAPE), shifted / "P002" / "adc_mean.nii.gz")
        out = tmp_path / f"out_{len(message)}"
        rc = evaluate_script.main(["--pred", str(shifted), "--gt", str(gt_dir), "--out", str(out), "--n_panels", "0",
                                   "--clinical"])
        assert rc == 2 and message in error_line(capsys.readouterr().err)
        assert not list(out.glob("clinical*")) and not (out / "bland_altman.png").exists()
    (shifted / "P002" / "adc_mean.nii.gz").unlink()
    save(np.ones(SHAPE), shifted / "P002" / "adc_std.nii.gz")
    rc = evaluate_script.main(["--pred", str(shifted), "--gt", str(gt_dir), "--out", str(tmp_path / "o"),
                               "--n_panels", "0", "--clinical"])
    assert rc == 2 and "P002: adc_std.nii.gz has no adc_mean.nii.gz" in error_line(capsys.readouterr().err)
    for flag, value, message in (("--adc_core_threshold", "-5", "--adc_core_threshold must be a positive"),
                                 ("--min_cluster_ml", "-1", "--min_cluster_ml must be >= 0"),
                                 ("--core_threshold_ml", "0", "--core_threshold_ml must be a positive")):
        rc = evaluate_script.main(["--pred", str(perfect), "--gt", str(gt_dir), "--out", str(tmp_path / "o2"),
                                   "--clinical", flag, value])
        assert rc == 2 and message in error_line(capsys.readouterr().err)
        assert not (tmp_path / "o2").exists()  # refused before anything is scored
