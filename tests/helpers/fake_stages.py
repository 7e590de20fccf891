"""A stand-in interpreter for the study's stages: run as ``python``, it does what each command line
of the study would leave behind (a cohort, index files, checkpoints, sample files, evaluate.py's CSV
files) in milliseconds, and logs every call. ``FAKE_FAIL=<text>`` makes a call whose arguments
contain the text exit with code 3 (an interrupted stage); ``-c`` runs in the real interpreter.

The scores it writes have a known answer: per patient and seed, cLDM-PT (reconstruction target)
has a lesion MAE 0.03 below the control's, the input target the control's plus a small
zero-centred wobble (no effect).
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

TIMESTAMP = "2025-01-01T00-00-00"


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def _values(args: list[str], name: str) -> list[str]:
    start = args.index(name) + 1
    end = next((i for i in range(start, len(args)) if args[i].startswith("--")), len(args))
    return args[start:end]


def _write_csv(path: Path, rows: list[dict]) -> None:
    columns = list(rows[0])
    lines = [",".join(columns)] + [",".join("" if r[c] is None else str(r[c]) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")


def _cohort(args: list[str]) -> None:
    out = Path(_option(args, "--out"))
    patients, number = {}, 0
    for split in ("train", "val", "test"):
        n = int(_option(args, f"--n_{split}"))
        patients[split] = {}
        for i in range(n):
            number += 1
            pid = f"P{number:04d}"
            (out / split / pid).mkdir(parents=True, exist_ok=True)
            patients[split][pid] = {"lesion_ml": 0.0 if i < n // 4 else 1.0 + i}  # a quarter lesion-free
    (out / "cohort.json").write_text(json.dumps({"voxel_mm": [3.5, 3.5, 5.0], "patients": patients}))


def _scores(args: list[str]) -> None:
    out = Path(_option(args, "--out"))
    out.mkdir(parents=True, exist_ok=True)
    seed = int(re.search(r"seed_(\d+)", str(out)).group(1))
    runs = [p.split("=", 1)[0] for p in _values(args, "--pred")] + ["VQGAN reconstruction"]
    gt = Path(_option(args, "--gt"))
    cohort = json.loads((gt.parent / "cohort.json").read_text())["patients"]["test"]
    summary, per_patient, contrast, clinical = [], [], [], []
    for i, pid in enumerate(sorted(cohort)):
        lesion = cohort[pid]["lesion_ml"] > 0
        for run in ("ground truth", "ground truth (training window)"):
            contrast.append({"run": run, "patient_id": pid, "sample": 0, "dwi_lesion_ratio": 1.6 if lesion else None,
                             "adc_lesion_mean": 600.0 if lesion else None, "lesion_core_share": 0.7 if lesion else None,
                             "core_ml": 2.0 if lesion else 0.0, "lesion_voxels": 30 if lesion else 0})
        for run in runs:
            control = 0.2 + 0.03 * math.sin(i) + 0.005 * math.cos(7 * seed + i)
            value = {"cLDM": control + 0.02, "cLDM-PT": control - 0.03 + 0.004 * math.cos(3 * i + seed),
                     "cLDM-PT (input target)": control + 0.004 * math.cos(5 * i + 2 * seed),
                     "VQGAN reconstruction": control / 2}.get(run, control)
            for modality, factor in (("dwi", 1.0), ("adc", 0.5)):
                per_patient.append({"run": run, "patient_id": pid, "modality": modality, "mae": 0.1 * factor,
                                    "lesion_mae": value * factor if lesion else None, "psnr": 20.0 + value,
                                    "ms_ssim_mean": 0.8})
            contrast.append({"run": run, "patient_id": pid, "sample": 0,
                             "dwi_lesion_ratio": 1.0 + 2 * (0.25 - value) if lesion else None,
                             "adc_lesion_mean": 800.0 if lesion else None, "lesion_core_share": 0.1 if lesion else None,
                             "core_ml": 1.0, "lesion_voxels": 30 if lesion else 0})
            clinical.append({"run": run, "patient_id": pid, "sample": 0, "core_measurable": "True",
                             "abs_volume_error_ml": 1.0 + value})
    for run in runs:
        for modality in ("dwi", "adc"):
            rows = [r for r in per_patient if r["run"] == run and r["modality"] == modality]
            lesion = [r["lesion_mae"] for r in rows if r["lesion_mae"] is not None]
            summary.append({"run": run, "modality": modality, "mae": 0.1, "lesion_mae": sum(lesion) / len(lesion),
                            "psnr": 20.0, "ms_ssim_mean": 0.8, "fid": None})
    _write_csv(out / "metrics_summary.csv", summary)
    _write_csv(out / "metrics_per_patient.csv", per_patient)
    _write_csv(out / "lesion_contrast.csv", contrast)
    _write_csv(out / "clinical_per_patient.csv", clinical)


def main(args: list[str]) -> int:
    if args[:1] == ["-c"]:
        os.execv(sys.executable, [sys.executable, *args])
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(" ".join(args) + "\n")
    if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in " ".join(args):
        return 3
    if args[0] == "-m":  # python -m ldm.data.preprocessing ...: the package's name, as a folder path would give it
        args = [args[1].replace(".", "/"), *args[2:]]
    program = Path(args[0]).name
    if program == "synthetic":
        _cohort(args)
    elif program == "preprocessing":
        out = Path(_option(args, "--output_dir"))
        out.mkdir(parents=True, exist_ok=True)
        patients = sorted(p.name for p in Path(_option(args, "--input_dir")).iterdir() if p.is_dir())
        (out / "index.json").write_text(json.dumps({"patients": patients}))
    elif program == "main.py":
        if "-r" in args:  # resumed: the run directory it names
            run = Path(_option(args, "-r"))
        else:
            run = Path(_option(args, "-l")) / f"{TIMESTAMP}_{_option(args, '-n')}"
        (run / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run / "checkpoints" / "last.ckpt").write_text("weights")
    elif program in ("sample_LDM.py", "reconstruct_VQGAN.py"):
        patients = json.loads((Path(_option(args, "--data")) / "index.json").read_text())["patients"]
        for pid in patients:
            folder = Path(_option(args, "--outdir")) / pid
            folder.mkdir(parents=True, exist_ok=True)
            for modality in ("dwi", "adc"):
                (folder / f"{modality}_sample_0.nii.gz").write_text("volume")
    elif program == "evaluate.py":
        _scores(args)
    else:
        raise SystemExit(f"fake python: no stand-in for {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
