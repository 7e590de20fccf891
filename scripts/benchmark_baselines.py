#!/usr/bin/env python
"""Training time per batch and peak memory of the Table 1 baselines against the cLDM, at the demo configs.

    python scripts/benchmark_baselines.py [--models cldm bbdm pix2pix cyclegan paired_cyclegan] \\
        [--warmup 2 --repeats 5] [--threads 2] [--json out.json]

Each model runs in its own process (so that its peak resident memory is its own): built from
``configs/demo/<model>.yaml`` with random weights (no checkpoint or data needed; the latent models'
first stage is the demo VQGAN's architecture, untrained), trained by a Lightning Trainer on
synthetic batches of the config's batch size (8) and size (64 x 64) with the config's learning
rate: the model's own ``training_step`` (both players' updates for a GAN, the UNet and EMA for the
latent models). Reported: the median wall time of a training batch over ``--repeats`` after
``--warmup`` untimed batches, and the process's peak RSS (Python and torch included, CPU). Numbers
depend on the machine and on its load: docs/baselines.md gives the ones measured for the project.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = {"cldm": "configs/demo/ldm.yaml", "bbdm": "configs/demo/bbdm.yaml", "cbbdm": "configs/demo/cbbdm.yaml",
          "pix2pix": "configs/demo/pix2pix.yaml", "cyclegan": "configs/demo/cyclegan.yaml",
          "paired_cyclegan": "configs/demo/paired_cyclegan.yaml"}


def measure(name: str, warmup: int, repeats: int, threads: int) -> dict:
    """One model's median batch time (s) and peak RSS (MiB), in this process."""
    import pytorch_lightning as pl
    import torch
    from omegaconf import OmegaConf
    from torch.utils.data import DataLoader, Dataset

    from ldm.util import instantiate_from_config

    torch.set_num_threads(threads)
    config = OmegaConf.load(ROOT / MODELS[name])
    if "first_stage_config" in config.model.params:
        config.model.params.first_stage_config.params.ckpt_path = None  # random weights: timing only
    pl.seed_everything(0, verbose=False)
    model = instantiate_from_config(config.model)
    batch_size = int(config.data.params.batch_size)
    model.learning_rate = float(config.model.base_learning_rate) * batch_size  # main.py's scaling
    size = tuple(OmegaConf.select(config, "model.params.image_size"))
    if "first_stage_config" in config.model.params:  # latent size x the first stage's factor
        size = tuple(s * 2 ** (len(config.model.params.first_stage_config.params.ddconfig.ch_mult) - 1) for s in size)

    class Slices(Dataset):
        def __len__(self) -> int:
            return (warmup + repeats) * batch_size

        def __getitem__(self, i: int) -> dict:
            g = torch.Generator().manual_seed(i)
            mask = torch.ones(1, *size)
            lesion = (torch.rand(1, *size, generator=g) > 0.95).float()
            return {"ctp": torch.rand(15, *size, generator=g) * 2 - 1, "mri": torch.rand(2, *size, generator=g) * 2 - 1,
                    "mask": mask, "lesion": lesion, "has_mri": True}

    times: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            times.append(time.perf_counter() - self.t0)

    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[Timer()])
    trainer.fit(model, DataLoader(Slices(), batch_size=batch_size))
    timed = times[warmup:]
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"model": name, "config": MODELS[name], "batch_size": batch_size, "size": list(size),
            "seconds_per_batch": statistics.median(timed), "min_seconds": min(timed), "max_seconds": max(timed),
            "repeats": len(timed), "trainable_params": n_params, "threads": threads,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["cldm", "bbdm", "pix2pix", "cyclegan", "paired_cyclegan"],
                   choices=tuple(MODELS))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--json", default=None, help="write every number here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: measure one model
    opt = p.parse_args(argv)
    if opt.warmup < 0 or opt.repeats < 1:
        print("benchmark_baselines.py: error: --warmup must be >= 0 and --repeats >= 1", file=sys.stderr)
        return 2
    if opt.worker:
        print(json.dumps(measure(opt.worker, opt.warmup, opt.repeats, opt.threads)))
        return 0
    rows = []
    for name in opt.models:
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--warmup", str(opt.warmup), "--repeats",
                               str(opt.repeats), "--threads", str(opt.threads)], capture_output=True, text=True,
                              cwd=ROOT)
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = next((r for r in rows if r["model"] == "cldm"), None)
    print("| model | config | batch | s / batch (median) | x cLDM | peak RSS (MiB) | trainable params |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['seconds_per_batch'] / base['seconds_per_batch']:.2f}" if base else "-"
        print(f"| {r['model']} | {r['config']} | {r['batch_size']} x {r['size'][0]}x{r['size'][1]} | "
              f"{r['seconds_per_batch']:.3f} | {ratio} | {r['peak_rss_mib']:.0f} | {r['trainable_params'] / 1e6:.2f} M |")
    if opt.json:
        Path(opt.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
