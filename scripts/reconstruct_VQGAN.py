"""Write the VQGAN's reconstruction D(E(x)) of a cohort's DWI/ADC as NIfTI volumes: the ceiling of
every latent model's lesion, scored beside the models by ``evaluate.py --reconstruction``.

    python scripts/reconstruct_VQGAN.py -r logs/<vqgan run> --data data/npy/test --outdir samples/vqgan
    python scripts/evaluate.py --pred cLDM=... cLDM-PT=... --reconstruction samples/vqgan --gt RAW/test --out ...

``-r`` is a VQGAN run (or a latent-diffusion run: its first stage is used) or a checkpoint file;
``--data`` a preprocessed split (the run's intensity window is checked against it). Writes
``<outdir>/<patient_id>/{dwi,adc}_sample_0.nii.gz`` in the source geometry and physical units
(ldm/inference/reconstruction.py); patients already written are skipped. Mistakes end with one
line and exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ldm.cli import user_error  # noqa: E402


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-r", "--resume", required=True, help="VQGAN (or latent-diffusion) run directory or checkpoint")
    p.add_argument("-b", "--base", nargs="*", default=[], metavar="config.yaml",
                   help="configs merged after the run's own (needed for a checkpoint outside a run directory)")
    p.add_argument("--data", required=True, help="preprocessed split (python -m ldm.data.preprocessing output)")
    p.add_argument("--outdir", required=True, help="where <patient_id>/{dwi,adc}_sample_0.nii.gz go")
    p.add_argument("--patients", nargs="+", default=None, help="only these patients")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    from ldm.data.preprocessing.contract import check_split, load_run_contract
    from ldm.data.record import load_index
    from ldm.inference.reconstruction import reconstruct_cohort
    from ldm.inference.run_loading import choose_device, load_model, load_run_config, resolve_run
    from ldm.util import ConfigError

    opt = get_parser().parse_args(argv)
    try:
        run_files = resolve_run(opt.resume, opt.base)
        config = load_run_config(run_files)
        try:
            records = load_index(opt.data)
            contract = load_run_contract(run_files.logdir)
            if contract is not None:
                check_split(contract, opt.data)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from e
        model = load_model(config, run_files.checkpoint, choose_device(opt.device))
        report = reconstruct_cohort(model, opt.data, opt.outdir, records, batch_size=opt.batch_size,
                                    patients=opt.patients, progress=not opt.no_progress)
    except ConfigError as e:
        return user_error(e, "reconstruct_VQGAN.py")
    skipped = f" ({len(report.skipped)} already there)" if report.skipped else ""
    print(f"wrote D(E(x)) of {len(report.written)} patient(s), {report.n_slices} slice(s), to {opt.outdir}{skipped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
