"""Score synthesised DWI / ADC volumes against the ground truth with the metrics of Table 1.

    python scripts/evaluate.py --pred cLDM=samples/cldm cLDM-PT=samples/cldm_pt \\
        --gt data/raw/test --out results/table1 [--inception_weights inception-2015-12-05.pt]

Predictions: ``<pred>/<patient_id>/{dwi,adc}_sample_{k}.nii.gz`` (what scripts/sample_LDM.py
writes); ground truth: the raw cohort ``<gt>/<patient_id>/{dwi,adc,mask,lesion,ctp}.nii.gz``. Both
are mapped to [0, 1] with the ground truth's range under the intensity window the models were
trained with (``--window``, docs/data.md: ``lesion`` by default, ``reference_percentile`` the
reference's per-patient percentiles) and scored on the axial slices that preprocessing keeps
(``--slices``, the reference's rule by default). MAE and PSNR are reported over the brain mask by
default (``--metric_region slice``: the whole slice), the lesion MAE pooled over all lesion voxels
(``--lesion_mae slice_mean``: the mean of per-slice values); the CSV files hold every variant.
Runs are scored on the patients that all of them have; each pair of runs gets paired differences
per patient and per lesion slice with 95% bootstrap intervals and Wilcoxon p-values
(``paired_differences.csv`` and under the table). Writes ``metrics_per_slice.csv``,
``metrics_per_patient.csv``, ``metrics_summary.csv``, ``paired_differences.csv``, ``table1.md``
and Fig. 3-style panels ``panels/*.png`` into ``--out``. Beside Table 1, ``table1.md`` and
``lesion_contrast.csv`` give the lesion in physical units per model and patient (DWI lesion /
normal ratio, ADC lesion mean and ratio, share of lesion voxels with ADC < 620, core volume), with
the ceilings no latent model can pass: the ground truth through the training window, and the
first stage's reconstruction D(E(x)) of the test slices when ``--reconstruction`` gives its folder
(``scripts/reconstruct_VQGAN.py``). Input errors end with one line and exit
code 2; a patient that cannot be scored is reported and left out of every run (``--strict`` makes
it an error).

``--clinical`` adds the clinical read-out (ischemic core volume from ADC, its agreement with the
true ADC, the "core < 70 ml" decision, and the voxel std maps of ``sample_LDM.py --summary`` where
present): ``clinical_per_patient.csv``, ``clinical_agreement.csv``, ``clinical.md``,
``bland_altman.png`` [, ``uncertainty.csv``, ``uncertainty.png``] (see ldm/evaluation/clinical_report.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.cli import HelpFormatter, run_main  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    from ldm.data.transforms.intensity_window import WINDOWS
    from ldm.evaluation.clinical import ADC_CORE_THRESHOLD, CORE_THRESHOLD_ML

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--pred", nargs="+", action="append", required=True, metavar="[NAME=]DIR",
                   help="prediction folder(s), optionally named (cLDM=DIR); repeat or list several "
                        "to put runs side by side")
    p.add_argument("--gt", required=True, help="raw ground-truth cohort folder (one folder per patient)")
    p.add_argument("--out", required=True, help="output folder for CSV, markdown and panels")
    p.add_argument("--patients", nargs="+", default=None, help="evaluate only these patients")
    p.add_argument("--inception_weights", default=None,
                   help="local TorchScript Inception-v3 (e.g. inception-2015-12-05.pt) for FID; "
                        "without it FID is skipped and the table says so")
    p.add_argument("--device", default=None, help="device for the Inception network (default: cuda if available)")
    p.add_argument("--panels", nargs="+", default=None, metavar="PATIENT_ID",
                   help="patients to render as Fig. 3-style panels")
    p.add_argument("--n_panels", type=int, default=3,
                   help="without --panels: render this many patients, largest lesions first (0: none)")
    p.add_argument("--panel_sample", type=int, default=0, help="which sample k to show in the panels")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first patient that cannot be scored instead of leaving it out")
    p.add_argument("--slices", choices=("reference", "brain"), default="reference",
                   help="slices to score: the reference's rule (DWI, ADC and CTP with signal in the brain, as "
                        "preprocessing keeps by default) or every slice with brain")
    p.add_argument("--window", choices=WINDOWS, default="lesion",
                   help="intensity window that maps ground truth and prediction to [0, 1], the one the models were "
                        "trained under (docs/data.md): lesion, or reference_percentile (the reference's)")
    p.add_argument("--adc_window", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="lesion window: the ADC range in 10^-6 mm^2/s (default 0 2500)")
    p.add_argument("--dwi_headroom", type=float, default=None,
                   help="lesion window: DWI range 0 .. this x the brain median (default 3)")
    p.add_argument("--reconstruction", default=None, metavar="DIR",
                   help="first-stage reconstructions D(E(x)) of the test patients (scripts/reconstruct_VQGAN.py): "
                        "scored as a ceiling row, never in the paired comparisons")
    p.add_argument("--metric_region", choices=("brain", "slice"), default="brain",
                   help="MAE and PSNR of the table over the brain mask or the whole slice (field-of-view dependent)")
    p.add_argument("--lesion_mae", choices=("pooled", "slice_mean"), default="pooled",
                   help="lesion MAE of the table: pooled over all lesion voxels, or the mean of per-slice values")
    p.add_argument("--failed_ratio", type=float, default=0.5,
                   help="a slice whose synthesised brain mean is below this fraction of the ground truth's "
                        "counts as failed (dark); the share is reported")
    p.add_argument("--pairs", nargs="+", default=None, metavar="A:B",
                   help="run pairs for the paired statistics (B - A); default: every pair in the order given")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples of the paired intervals")
    p.add_argument("--clinical", action="store_true",
                   help="also write the clinical read-out: core volume from ADC, agreement, uncertainty")
    p.add_argument("--adc_core_threshold", type=float, default=ADC_CORE_THRESHOLD,
                   help="core = ADC below this (10^-6 mm^2/s) inside the brain mask; 620 is RAPID's "
                        "(Purushotham et al., Int J Stroke 2015)")
    p.add_argument("--min_cluster_ml", type=float, default=None,
                   help="drop core clusters (26-connected) smaller than this many ml (None: keep all)")
    p.add_argument("--core_threshold_ml", type=float, default=CORE_THRESHOLD_ML,
                   help="decision compared: core below this many ml (70: DEFUSE 3 eligibility)")
    return p


def main(argv: list[str] | None = None) -> int:
    from ldm.evaluation.run_evaluation import run_evaluation
    from ldm.evaluation.volumes import EvaluationInputError

    opt = get_parser().parse_args(argv)
    return run_main(lambda: run_evaluation(opt), "evaluate.py", EvaluationInputError)


if __name__ == "__main__":
    sys.exit(main())
