"""scripts/evaluate.py on a tiny NIfTI cohort: numbers against an independent computation, tables,
panels, FID with a local TorchScript extractor, and every kind of bad input."""
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tests.helpers.evaluation_files import AFFINE, SHAPE, save
from tests.helpers.scripts import error_line as script_error_line
from tests.helpers.scripts import load_script, read_csv

ROOT = Path(__file__).resolve().parents[1]


evaluate_script = load_script("evaluate")


def error_line(stderr: str) -> str:
    return script_error_line(stderr, "evaluate.py")


def make_patient(root, pid, seed, lesion=True):
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    brain = ((x - 12) / 10) ** 2 + ((y - 14) / 12) ** 2 < 1
    mask = np.repeat(brain[..., None], SHAPE[2], axis=2)
    mask[..., 0] = False  # a slice without brain: not scored
    dwi = (rng.uniform(200, 800, size=SHAPE) * mask).astype(np.float32)
    adc = (rng.uniform(600, 3000, size=SHAPE) * mask).astype(np.float32)
    les = np.zeros(SHAPE, bool)
    if lesion:
        les[8:12, 10:14, 2:4] = True
        dwi[les] *= 1.8
        adc[les] *= 0.5
    ctp = rng.uniform(0, 120, size=SHAPE + (15,)) * mask[..., None]
    folder = root / pid
    for name, arr in dict(dwi=dwi, adc=adc, mask=mask, lesion=les, ctp=ctp).items():
        save(arr, folder / f"{name}.nii.gz")
    return dict(dwi=dwi, adc=adc, mask=mask, lesion=les)


def predict(gt, root, pid, seed, noise, k=0, affine=AFFINE, shape=SHAPE):
    rng = np.random.default_rng(seed)
    for modality in ("dwi", "adc"):
        pred = gt[modality] * (1 + noise * rng.normal(size=SHAPE))
        if shape != SHAPE:
            pred = np.zeros(shape)
        save(pred * gt["mask"] if shape == SHAPE else pred, root / pid / f"{modality}_sample_{k}.nii.gz", affine)


@pytest.fixture
def cohort(tmp_path):
    gt_dir = tmp_path / "gt"
    gts = {pid: make_patient(gt_dir, pid, seed, lesion=(pid != "P002"))
           for seed, pid in enumerate(["P001", "P002", "P003"])}
    perfect, noisy, noisier = tmp_path / "perfect", tmp_path / "noisy", tmp_path / "noisier"
    for i, (pid, gt) in enumerate(gts.items()):
        predict(gt, perfect, pid, i, noise=0.0)
        predict(gt, noisy, pid, 10 + i, noise=0.3)
        predict(gt, noisier, pid, 20 + i, noise=0.9)
    return gt_dir, perfect, noisy, gts


def reference_scores(gt, pred_path, modality, window="lesion"):
    """Independent computation: the window's normalisation (the reference's by np.quantile; the
    lesion window's fixed ADC range and 3 x the brain median for DWI), then the metric formulas.

    Returns {mae_slice, mae_brain, psnr_slice, psnr_brain, lesion_slice_mean, lesion_pooled} over the
    patient's brain slices (its CTP has signal wherever there is brain)."""
    mask = gt["mask"]
    ref = np.clip(gt[modality].astype(np.float64), 0, None)
    if window == "reference_percentile":
        lo, hi = np.quantile(ref[mask], 0.005), np.quantile(ref[mask], 0.995)
    else:
        lo, hi = (0.0, 2500.0) if modality == "adc" else (0.0, 3 * np.median(ref[mask]))

    def norm(v):
        out = (np.clip(v, lo, hi) - lo) / (hi - lo)
        return np.where(mask, out, 0.0)

    x, x_hat = norm(ref), norm(np.asarray(nib.load(str(pred_path)).dataobj, dtype=np.float64))
    out = {k: [] for k in ("mae_slice", "mae_brain", "psnr_slice", "psnr_brain", "lesion")}
    num = den = 0.0
    for z in range(SHAPE[2]):
        if not mask[..., z].any():
            continue
        err = np.abs(x[..., z] - x_hat[..., z])
        brain = mask[..., z]
        out["mae_slice"].append(err.mean())
        out["mae_brain"].append(err[brain].mean())
        out["psnr_slice"].append(10 * np.log10(1.0 / np.mean(err ** 2)))
        out["psnr_brain"].append(10 * np.log10(1.0 / np.mean(err[brain] ** 2)))
        m = gt["lesion"][..., z]
        if m.any():
            out["lesion"].append(err[m].sum() / m.sum())
            num, den = num + err[m].sum(), den + m.sum()
    scores = {k: float(np.mean(v)) for k, v in out.items() if k != "lesion"}
    scores["lesion_slice_mean"] = float(np.mean(out["lesion"])) if out["lesion"] else None
    scores["lesion_pooled"] = num / den if den else None
    return scores


@pytest.mark.parametrize("window", ["lesion", "reference_percentile"])
def test_two_runs_side_by_side_with_independent_numbers(cohort, tmp_path, capsys, window):
    gt_dir, perfect, noisy, gts = cohort
    out = tmp_path / "out"
    rc = evaluate_script.main(["--pred", f"perfect={perfect}", f"noisy={noisy}", f"noisier={noisy.parent / 'noisier'}",
                               "--gt", str(gt_dir), "--out", str(out), "--n_panels", "2", "--window", window])
    assert rc == 0
    patients = read_csv(out / "metrics_per_patient.csv")
    by = {(r["run"], r["patient_id"], r["modality"]): r for r in patients}
    for pid, gt in gts.items():
        for modality in ("dwi", "adc"):
            ref = reference_scores(gt, noisy / pid / f"{modality}_sample_0.nii.gz", modality, window)
            row = by[("noisy", pid, modality)]
            for key in ("mae_slice", "mae_brain", "psnr_slice", "psnr_brain"):
                assert float(row[f"{key}_mean"]) == pytest.approx(ref[key], rel=1e-4), key
            # the table's headline columns default to the field-of-view independent variants
            assert float(row["mae"]) == float(row["mae_brain_mean"]) and float(row["psnr"]) == float(row["psnr_brain_mean"])
            assert float(row["mae_brain_mean"]) > float(row["mae_slice_mean"])  # the background dilutes the error
            assert int(row["n_slices"]) == SHAPE[2] - 1  # the empty-mask slice is not scored
            if ref["lesion_pooled"] is None:
                assert row["lesion_mae"] == "" and row["lesion_mae_slice_mean"] == "" and row["n_lesion_slices"] == "0"
            else:
                assert float(row["lesion_mae_slice_mean"]) == pytest.approx(ref["lesion_slice_mean"], rel=1e-4)
                assert float(row["lesion_mae_pooled"]) == pytest.approx(ref["lesion_pooled"], rel=1e-4)
                assert float(row["lesion_mae"]) == float(row["lesion_mae_pooled"])
            perfect_row = by[("perfect", pid, modality)]
            assert float(perfect_row["mae"]) == 0.0 and perfect_row["n_failed"] == "0"
            assert float(perfect_row["ms_ssim_mean"]) == pytest.approx(1.0, abs=1e-5)
            assert 0 < float(row["ms_ssim_mean"]) < 1

    summary = {(r["run"], r["modality"]): r for r in read_csv(out / "metrics_summary.csv")}
    slices = [r for r in read_csv(out / "metrics_per_slice.csv") if r["run"] == "noisy" and r["modality"] == "dwi"]
    assert float(summary[("noisy", "dwi")]["mae"]) == pytest.approx(np.mean([float(r["mae_brain"]) for r in slices]), rel=1e-5)
    lesion = [r for r in slices if r["lesion_mae"] != ""]
    assert len(lesion) == 4  # P001 and P003, two lesion slices each
    assert float(summary[("noisy", "dwi")]["lesion_mae_slice_mean"]) == pytest.approx(
        np.mean([float(r["lesion_mae"]) for r in lesion]), rel=1e-5)
    pooled = sum(float(r["lesion_abs_error"]) for r in lesion) / sum(int(r["lesion_voxels"]) for r in lesion)
    assert float(summary[("noisy", "dwi")]["lesion_mae"]) == pytest.approx(pooled, rel=1e-5)

    table, contrast = (out / "table1.md").read_text().split("### Lesion contrast in physical units")
    assert "| Model | DWI |" in table and "Lesion MAE↓" in table
    lines = [line for line in table.splitlines() if line.startswith(("| perfect", "| noisy", "| noisier"))]
    assert len(lines) == 3 and all(line.count("|") == 12 for line in lines)
    assert "nan" not in table.lower() and "inf" not in table.lower()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0][1] == "**0.000**" and cells[1][1].startswith("<u>") and "*" not in cells[2][1] + cells[2][3]
    assert cells[0][3].startswith("**100.00") and cells[1][3].startswith("<u>")  # PSNR: higher is better
    assert "without lesion" in table and "P002" in table
    assert "MAE and PSNR over the brain mask" in table and "lesion MAE pooled" in table
    assert "FID skipped: no Inception weights given" in table
    sources = [line.split("|")[1].strip() for line in contrast.splitlines() if line.startswith("| ")][1:]
    assert sources[:5] == ["ground truth", "ground truth (training window)", "perfect", "noisy", "noisier"]
    table = table + contrast
    # paired statistics for every pair of runs, under the table and in the CSV
    assert "#### noisy vs perfect" in table and "#### noisier vs noisy" in table
    paired = read_csv(out / "paired_differences.csv")
    row = next(r for r in paired if (r["run_a"], r["run_b"], r["modality"], r["metric"], r["unit"])
               == ("perfect", "noisy", "dwi", "mae", "patient"))
    differences = [float(by[("noisy", p, "dwi")]["mae"]) - float(by[("perfect", p, "dwi")]["mae"]) for p in gts]
    assert int(row["n"]) == 3 and float(row["difference"]) == pytest.approx(np.mean(differences), rel=1e-5)
    assert float(row["ci_low"]) <= float(row["difference"]) <= float(row["ci_high"])
    assert float(row["p_value"]) == pytest.approx(0.25)  # exact Wilcoxon, n = 3, every difference positive
    for name in ("P001.png", "P003.png", "fig3.png"):  # largest lesions first; P002 has none
        assert (out / "panels" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "panels" / "P002.png").exists()
    assert "FID skipped" in capsys.readouterr().out


class TinyFeatures(torch.nn.Module):
    """Stands in for the Inception TorchScript: same call, checks it gets 299 x 299 images in [0, 255]."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        assert x.shape[1] == 3 and x.shape[2] == 299 and x.shape[3] == 299
        assert bool(x.max() <= 255.0) and bool(x.min() >= 0.0)
        pooled = torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 2)
        return pooled.flatten(1)


def test_fid_with_a_local_torchscript_extractor(cohort, tmp_path):
    gt_dir, perfect, noisy, _ = cohort
    weights = tmp_path / "features.pt"
    torch.jit.save(torch.jit.script(TinyFeatures()), str(weights))
    out = tmp_path / "out"
    rc = evaluate_script.main(["--pred", f"perfect={perfect}", "--pred", f"noisy={noisy}", "--gt", str(gt_dir),
                               "--out", str(out), "--inception_weights", str(weights), "--n_panels", "0"])
    assert rc == 0
    summary = {(r["run"], r["modality"]): r for r in read_csv(out / "metrics_summary.csv")}
    assert float(summary[("perfect", "dwi")]["fid"]) == pytest.approx(0.0, abs=1e-6)
    assert float(summary[("noisy", "dwi")]["fid"]) > 1e-4
    assert "skipped" not in (out / "table1.md").read_text()
    assert not (out / "panels").exists()


def test_bad_inputs_are_reported_and_left_out(cohort, tmp_path, capsys):
    gt_dir, perfect, noisy, gts = cohort
    shifted = AFFINE.copy()
    shifted[0, 3] += 2.0
    predict(gts["P001"], noisy, "P001", 0, noise=0.3, affine=shifted)                  # another grid
    predict(gts["P002"], noisy, "P002", 0, noise=0.3, shape=(24, 28, 6))               # another shape
    for f in (noisy / "P003").iterdir():                                               # missing patient
        f.unlink()
    (noisy / "P003").rmdir()
    predict(gts["P001"], noisy, "P999", 0, noise=0.3)                                  # no ground truth
    out = tmp_path / "out"
    rc = evaluate_script.main(["--pred", f"perfect={perfect}", f"noisy={noisy}", "--gt", str(gt_dir),
                               "--out", str(out), "--n_panels", "0"])
    err = capsys.readouterr()
    assert rc == 2  # every patient of 'noisy' was left out: nothing to score is an error
    assert "run noisy: no patient" in error_line(err.err)
    log = err.out + err.err
    assert "patient P001: dwi_sample_0.nii.gz has an affine that differs" in log
    assert "patient P002: dwi_sample_0.nii.gz has shape (24, 28, 6) but the ground truth has (24, 28, 5)" in log
    assert "patient P003 has no prediction folder" in log
    assert "patient P999 has predictions but no ground truth DWI/ADC" in log

    predict(gts["P003"], noisy, "P003", 0, noise=0.3)
    rc = evaluate_script.main(["--pred", f"perfect={perfect}", f"noisy={noisy}", "--gt", str(gt_dir),
                               "--out", str(out), "--n_panels", "0"])
    assert rc == 0
    table = (out / "table1.md").read_text()
    assert "noisy: 1 patient(s)" in table and "excluded: patient P001" in table and "P999" in table
    rows = read_csv(out / "metrics_per_patient.csv")
    assert {r["patient_id"] for r in rows if r["run"] == "noisy"} == {"P003"}

    rc = evaluate_script.main(["--pred", f"noisy={noisy}", "--gt", str(gt_dir), "--out", str(out), "--strict"])
    assert rc == 2 and "P001" in error_line(capsys.readouterr().err)


def test_command_line_errors_are_one_line(cohort, tmp_path, capsys):
    gt_dir, perfect, _, _ = cohort
    cases = [
        (["--pred", str(tmp_path / "nope"), "--gt", str(gt_dir)], "does not exist"),
        (["--pred", f"a={perfect}", f"a={perfect}", "--gt", str(gt_dir)], "given twice"),
        (["--pred", str(perfect), "--gt", str(tmp_path / "perfect")], "no patient folder with dwi"),
        (["--pred", str(perfect), "--gt", str(gt_dir), "--inception_weights", str(tmp_path / "x.pt")],
         "Inception weights"),
    ]
    for args, message in cases:
        rc = evaluate_script.main(args + ["--out", str(tmp_path / "o")])
        assert rc == 2 and message in error_line(capsys.readouterr().err), args


def test_lesion_mae_never_nan_when_no_patient_has_lesion(tmp_path):
    gt_dir, pred = tmp_path / "gt", tmp_path / "pred"
    gt = make_patient(gt_dir, "P010", 0, lesion=False)
    predict(gt, pred, "P010", 1, noise=0.2)
    assert evaluate_script.main(["--pred", str(pred), "--gt", str(gt_dir), "--out", str(tmp_path / "o"),
                                 "--n_panels", "1"]) == 0
    table = (tmp_path / "o" / "table1.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| pred"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "–" and cells[7] == "–"  # lesion MAE of DWI and ADC: undefined, shown as a dash
    assert not any(math.isnan(float(c)) for c in cells[1:] if c not in ("–",))
    assert (tmp_path / "o" / "panels" / "P010.png").is_file()


def _table_rows(path):
    return [line for line in path.read_text().splitlines() if line.startswith("| run")]


def test_runs_are_compared_on_the_patients_they_all_have(cohort, tmp_path, capsys):
    """A run that lacks a patient must not be ranked on other patients than the rest: the table of
    (A on P1-P3, B on P1, P3) equals the table of both runs on P1, P3."""
    gt_dir, perfect, noisy, gts = cohort
    partial = tmp_path / "partial"
    for i, pid in enumerate(["P001", "P003"]):
        predict(gts[pid], partial, pid, 30 + i, noise=0.5)
    out_all, out_common = tmp_path / "all", tmp_path / "common"
    assert evaluate_script.main(["--pred", f"run_a={noisy}", f"run_b={partial}", "--gt", str(gt_dir),
                                 "--out", str(out_all), "--n_panels", "0"]) == 0
    assert evaluate_script.main(["--pred", f"run_a={noisy}", f"run_b={partial}", "--gt", str(gt_dir),
                                 "--out", str(out_common), "--n_panels", "0", "--patients", "P001", "P003"]) == 0
    rows_all = [line.split("|")[2:] for line in (out_all / "table1.md").read_text().splitlines()
                if line.startswith(("| run_a", "| run_b"))]
    rows_common = [line.split("|")[2:] for line in (out_common / "table1.md").read_text().splitlines()
                   if line.startswith(("| run_a", "| run_b"))]
    assert rows_all == rows_common and len(rows_all) == 4  # Table 1 and the lesion contrast
    table = (out_all / "table1.md").read_text()
    assert "run_a: 2 patient(s)" in table and "P002 (not scored in run_b)" in table
    assert "patient P002 has no prediction folder" in capsys.readouterr().out
    # --strict refuses instead
    assert evaluate_script.main(["--pred", f"run_a={noisy}", f"run_b={partial}", "--gt", str(gt_dir),
                                 "--out", str(tmp_path / "strict"), "--strict"]) == 2
    assert "P002" in error_line(capsys.readouterr().err)


def test_slice_rule_leaves_out_a_slice_without_dwi_signal_and_counts_dark_slices(tmp_path):
    gt_dir, pred = tmp_path / "gt", tmp_path / "pred"
    gt = make_patient(gt_dir, "P020", 0, lesion=True)
    dwi = gt["dwi"].copy()
    dwi[..., 1] = 0.0  # brain in the mask, but no DWI signal: the reference preprocessing drops this slice
    save(dwi, gt_dir / "P020" / "dwi.nii.gz")
    gt["dwi"] = dwi
    predict(gt, pred, "P020", 1, noise=0.1)
    dark = np.asarray(nib.load(str(pred / "P020" / "adc_sample_0.nii.gz")).dataobj).copy()
    dark[..., 3] *= 0.2  # one synthesised ADC slice far darker than the ground truth
    save(dark, pred / "P020" / "adc_sample_0.nii.gz")
    for rule, expected in (("reference", [2, 3, 4]), ("brain", [1, 2, 3, 4])):
        out = tmp_path / rule
        assert evaluate_script.main(["--pred", str(pred), "--gt", str(gt_dir), "--out", str(out), "--n_panels", "0",
                                     "--slices", rule]) == 0
        rows = [r for r in read_csv(out / "metrics_per_slice.csv") if r["modality"] == "adc"]
        assert [int(r["slice_index"]) for r in rows] == expected
        summary = {r["modality"]: r for r in read_csv(out / "metrics_summary.csv")}
        assert summary["adc"]["n_failed"] == "1" and summary["dwi"]["n_failed"] == "0"
        assert float(summary["adc"]["failed_share"]) == pytest.approx(1 / len(expected))
        assert "Failed slices (synthesised brain mean below 0.5 x the ground truth's)" in (out / "table1.md").read_text()
