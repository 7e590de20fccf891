#!/usr/bin/env python
"""Benchmark the training steps of the three stages and sampling (DDIM and DPM-Solver++).

    python scripts/benchmark.py --config configs/benchmark/small.yaml
    python scripts/benchmark.py --config configs/benchmark/paper.yaml --device cuda --precision bf16-mixed \
        --json bench_paper.json lapt.params.decoder_checkpointing=true

Measures, as medians over ``--repeats`` after ``--warmup`` untimed runs: the stage-2 training step
(forward, backward, AdamW, EMA) and the post-training step at the same batch and their ratio; the
VQGAN step with both optimisers; sampling throughput of every sampler in ``benchmark.samplers``
(slices/s at ``--sample_steps``, decoding included) and, for DDIM, the projected time for the
paper's test set; with ``--profile``, each step's per-operator share of its time; peak memory (CUDA
max_memory_allocated, or the process's peak RSS on CPU); model FLOPs per step (FlopCounterMode)
and achieved FLOP/s, as a fraction of the GPU's dense peak when it is known (or ``--peak_tflops``).
Prints a table and writes every number to ``--json``. Models start from random weights: no
checkpoint or data is needed. Trailing ``key=value`` arguments override the config (dotlist).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ldm.benchmark.models import load_benchmark_config  # noqa: E402
from ldm.benchmark.report import format_report  # noqa: E402
from ldm.benchmark.runner import PARTS, BenchmarkRun, Settings  # noqa: E402
from ldm.cli import EXIT_USER_ERROR  # noqa: E402
from ldm.precision import PRECISIONS  # noqa: E402
from ldm.io import atomic_write_json  # noqa: E402
from ldm.util import ConfigError  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="benchmark config, e.g. configs/benchmark/small.yaml")
    p.add_argument("--batch", type=int, default=None, help="training batch size (default: the config's)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median reported)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs before timing")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda when available, else cpu")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="Lightning precision: 32 or bf16-mixed (autocast); default: the config's")
    p.add_argument("--sample_steps", type=int, default=None, help="sampler steps of the sampling benchmark")
    p.add_argument("--sample_batch", type=int, default=None, help="slices per sampling batch (default: --batch)")
    p.add_argument("--only", default=",".join(PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)} (default: all)")
    p.add_argument("--peak_tflops", type=float, default=None,
                   help="the device's peak TFLOP/s for the utilisation figure (overrides the built-in table)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (on a shared CPU, fewer threads than cores can be faster)")
    p.add_argument("--no_flops", action="store_true", help="skip the FLOP counts (they add a few one-slice steps)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, profile each step (torch.profiler): per-operator share of its time")
    p.add_argument("--json", default=None, help="write the results here (JSON)")
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        config = load_benchmark_config(args.config, overrides)
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        parts = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise ConfigError(f"--only: unknown part {unknown[0]!r}; choose from {','.join(PARTS)}")
        for name in ("batch", "repeats", "sample_steps", "sample_batch"):
            value = getattr(args, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}")
        if args.warmup is not None and args.warmup < 0:
            raise ConfigError(f"--warmup must be >= 0, got {args.warmup}")
        settings = Settings(device=device, precision=args.precision or str(config.benchmark.precision),
                            parts=parts, batch_size=args.batch, repeats=args.repeats, warmup=args.warmup,
                            sample_steps=args.sample_steps, sample_batch_size=args.sample_batch,
                            peak_tflops=args.peak_tflops, count_flops=not args.no_flops,
                            profile=args.profile)
        run = BenchmarkRun(config, settings, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ConfigError, ValueError) as e:
        print(f"benchmark: {e}", file=sys.stderr)  # this script's own wording, kept: callers may match it
        return EXIT_USER_ERROR
    report = run.run()
    report["config"] = args.config
    report["overrides"] = list(overrides)
    print(format_report(report))
    if args.json:
        atomic_write_json(args.json, report)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
