"""Runs the benchmark of a config: each stage's training step, sampling, and FLOP counts.

Models are built one at a time and freed before the next, so that each memory peak is its own.
Order: FLOP counts per slice, stage 2 (then sampling with the same model), post-training, VQGAN.

FLOPs. "Model FLOPs" of a training step are counted by FlopCounterMode on a one-slice step with
activation checkpointing switched off, times the batch size (every layer is per-slice linear):
the work the model needs, which utilisation figures are based on. Recomputation by activation
checkpointing is extra work that is not in this figure (FlopCounterMode does not see it either);
``flops`` estimates its share for the decoder. Achieved FLOP/s = model FLOPs / median step time;
utilisation = achieved / the GPU's dense peak for the precision (see ``hardware``).
"""
from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from ldm.benchmark import models as bench_models
from ldm.benchmark.flops import activation_checkpointing_disabled, count_flops, forward_flops
from ldm.benchmark.hardware import describe_machine, lookup_peak_tflops
from ldm.benchmark.profile import operator_shares
from ldm.benchmark.steps import (
    diffusion_training_step,
    model_optimizers,
    sampling_step,
    slice_batch,
    synthetic_batch,
    vqgan_training_step,
)
from ldm.benchmark.timing import measure
from ldm.precision import precision_context

PARTS = ("flops", "ldm", "lapt", "sample", "vqgan")


@dataclass
class Settings:
    """What to run and how; ``None`` fields take the config's ``benchmark`` values."""

    device: torch.device
    precision: str
    parts: Sequence[str] = PARTS
    batch_size: int | None = None
    repeats: int | None = None
    warmup: int | None = None
    sample_steps: int | None = None
    sample_batch_size: int | None = None
    peak_tflops: float | None = None
    count_flops: bool = True
    profile: bool = False  # per-operator shares of each timed step (profile.py)


def _count(n: int) -> int:
    return int(n)


def _params(module: torch.nn.Module) -> int:
    return _count(sum(p.numel() for p in module.parameters()))


def _free() -> None:
    """Return freed memory (callers ``del`` their references first) so the next peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class BenchmarkRun:
    """One benchmark of a config on one device; :meth:`run` returns the JSON-able results."""

    def __init__(self, config: DictConfig, settings: Settings,
                 log: Callable[[str], None] = print) -> None:
        unknown = sorted(set(settings.parts) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown benchmark part {unknown[0]!r}; choose from {', '.join(PARTS)}")
        self.config = config
        self.s = settings
        self.log = log
        bench = config.benchmark
        self.batch_size = int(settings.batch_size or bench.batch_size)
        self.repeats = int(settings.repeats if settings.repeats is not None else bench.repeats)
        self.warmup = int(settings.warmup if settings.warmup is not None else bench.warmup)
        self.sample_steps = int(settings.sample_steps or bench.sample_steps)
        self.sample_batch_size = int(settings.sample_batch_size or bench.sample_batch_size or self.batch_size)
        self.image_size = tuple(int(s) for s in bench.image_size)
        self.latent_size = bench_models.latent_size(config)
        self.device = settings.device
        self.precision = settings.precision
        if self.device.type == "cuda":  # cuDNN autotuning, as lightning.trainer.benchmark: true in training
            torch.backends.cudnn.benchmark = bool(bench.cudnn_benchmark)
        self.machine = describe_machine(self.device)
        if self.device.type == "cpu" and self.precision.startswith("bf16") and not self.machine["cpu_bf16"]:
            log("warning: this CPU has no native bf16 (AVX512-BF16 / AMX): bf16-mixed is emulated and slower "
                "than float32 here; --precision 32 measures the model")
        name = self.machine.get("device_name", "")
        self.peak_tflops = settings.peak_tflops or (
            lookup_peak_tflops(name, self.precision) if self.device.type == "cuda" else None)

    # --------------------------------------------------------------------------------- helpers
    def _batch(self, n: int) -> dict[str, Any]:
        return synthetic_batch(n, self.image_size, self.device,
                               lesion_fraction=float(self.config.benchmark.lesion_fraction))

    def _measure(self, name: str, fn: Callable[[], Any], profile: bool = True) -> dict[str, Any]:
        self.log(f"[{name}] {self.warmup} warm-up + {self.repeats} timed repeats ...")
        timing = measure(fn, self.device, repeats=self.repeats, warmup=self.warmup,
                         on_repeat=lambda i, t: self.log(f"[{name}]   repeat {i + 1}/{self.repeats}: {t:.3f} s"))
        result = timing.to_dict()
        if profile and self.s.profile:  # after the timed repeats, so that the profiler's overhead is not in the times
            self.log(f"[{name}] profiling {self.repeats} more runs ...")
            result["profile"] = operator_shares(fn, self.repeats, self.device)
        return result

    def _utilisation(self, result: dict[str, Any]) -> None:
        flops = result.get("model_flop_per_step")
        if flops is None:
            return
        result["achieved_tflops"] = flops / result["median_s"] / 1e12
        if self.peak_tflops:
            result["peak_tflops"] = self.peak_tflops
            result["utilisation"] = result["achieved_tflops"] / self.peak_tflops

    def _step_flops(self, model: torch.nn.Module, make_step: Callable[[dict[str, Any]], Callable[[], Any]],
                    batch: dict[str, Any]) -> dict[str, Any]:
        """Model FLOPs of one step, counted on one slice (no recomputation) and scaled to the batch."""
        if not self.s.count_flops:
            return {}
        one = make_step(slice_batch(batch, 1))
        with activation_checkpointing_disabled(model):
            model_flops = count_flops(one).total
        n = next(v.shape[0] for v in batch.values() if isinstance(v, torch.Tensor))
        return {"model_flop_per_step": model_flops * n}

    # --------------------------------------------------------------------------------- parts
    def per_slice_flops(self) -> dict[str, Any]:
        """Parameters and per-slice forward GFLOP of the UNet, the decoder and the encoder."""
        ldm = bench_models.build_ldm(self.config).to(self.device).eval()
        h, w = self.latent_size
        unet = ldm.model.diffusion_model
        x = torch.randn(1, unet.in_channels, h, w, device=self.device)
        t = torch.full((1,), ldm.num_timesteps // 2, device=self.device, dtype=torch.long)
        z = torch.randn(1, int(ldm.channels), h, w, device=self.device)
        image = torch.randn(1, ldm.first_stage_model.encoder.in_channels, *self.image_size, device=self.device)
        out = {
            "unet_params": _params(unet),
            "first_stage_params": _params(ldm.first_stage_model),
            "decoder_params": _params(ldm.first_stage_model.decoder),
            "cond_stage_params": _params(ldm.cond_stage_model),
            "unet_forward_gflop_per_slice": forward_flops(unet, x, t).gflop,
            "decoder_forward_gflop_per_slice": forward_flops(ldm.first_stage_model.decode, z).gflop,
            "encoder_forward_gflop_per_slice": forward_flops(ldm.first_stage_model.encode, image).gflop,
        }
        # per slice: stage 2 = UNet forward + backward (~3 forwards) + encoding; post-training adds a
        # decoder forward and its input-gradient pass (~2 forwards), a third with decoder checkpointing
        unet, dec, enc = (out[f"{k}_forward_gflop_per_slice"] for k in ("unet", "decoder", "encoder"))
        stage2 = 3 * unet + enc
        out["estimated_lapt_over_ldm_flops"] = (stage2 + 2 * dec) / stage2
        out["estimated_lapt_over_ldm_flops_decoder_checkpointing"] = (stage2 + 3 * dec) / stage2
        del ldm, unet
        _free()
        return out

    def diffusion_step(self, name: str, model: torch.nn.Module) -> dict[str, Any]:
        model.to(self.device)
        batch = self._batch(self.batch_size)
        (optimizer,) = model_optimizers(model, model.learning_rate)[:1]

        def make(b: dict[str, Any]) -> Callable[[], Any]:
            return diffusion_training_step(model, optimizer, b, self.precision)

        result = {"batch_size": self.batch_size, **self._measure(name, make(batch))}
        result.update(self._step_flops(model, make, batch))
        self._utilisation(result)
        if getattr(model, "use_ema", False):
            ema = measure(lambda: model.model_ema(model.model), self.device, repeats=self.repeats, warmup=1)
            result["ema_update_median_s"] = ema.median_s
        return result

    def sampling(self, model: torch.nn.Module) -> dict[str, Any]:
        """DDIM throughput including decoding, and the decode alone (for the projection to S steps);
        then the same for every other sampler of ``benchmark.samplers`` (``by_sampler``)."""
        n = self.sample_batch_size
        batch = self._batch(n)
        steps = self.sample_steps
        result = {"batch_size": n, "steps": steps, "sampler": "ddim",
                  **self._measure("sample", sampling_step(model, batch["ctp"], steps, self.precision))}
        result["slices_per_s"] = n / result["median_s"]
        result["by_sampler"] = {"ddim": {"steps": steps, "median_s": result["median_s"],
                                         "slices_per_s": result["slices_per_s"]}}
        for name in self.config.benchmark.samplers:
            if name == "ddim":
                continue
            other = self._measure(f"sample {name}", sampling_step(model, batch["ctp"], steps, self.precision,
                                                                  sampler=name), profile=False)
            result["by_sampler"][name] = {"steps": steps, "median_s": other["median_s"],
                                          "slices_per_s": n / other["median_s"]}
        h, w = self.latent_size
        z = torch.randn(n, int(model.channels), h, w, device=self.device)

        def decode() -> None:
            with torch.inference_mode(), precision_context(self.device, self.precision):
                model.decode_first_stage(z)

        result["decode_median_s"] = measure(decode, self.device, repeats=self.repeats, warmup=1).median_s
        bench = self.config.benchmark
        per_step = max(result["median_s"] - result["decode_median_s"], 0.0) / steps
        paper_steps = int(bench.paper_sample_steps)
        batch_time = paper_steps * per_step + result["decode_median_s"]
        result["projected"] = {
            "steps": paper_steps, "slices": int(bench.test_set_slices), "batch_size": n,
            "seconds_per_batch": batch_time,
            "test_set_minutes": int(bench.test_set_slices) / n * batch_time / 60.0,
            "note": "per-step time (sample - decode) / steps scaled to the paper's steps, plus one decode",
        }
        if self.s.count_flops:
            one = sampling_step(model, batch["ctp"][:1], steps, self.precision)
            flops = count_flops(one).total * n
            result["model_flop_per_batch"] = flops
            result["achieved_tflops"] = flops / result["median_s"] / 1e12
            if self.peak_tflops:
                result["peak_tflops"] = self.peak_tflops
                result["utilisation"] = result["achieved_tflops"] / self.peak_tflops
        return result

    def vqgan_step(self) -> dict[str, Any]:
        model = bench_models.build_vqgan(self.config).to(self.device)
        batch = self._batch(self.batch_size)
        optimizers = model_optimizers(model, model.learning_rate)

        def make(b: dict[str, Any]) -> Callable[[], Any]:
            return vqgan_training_step(model, optimizers, b, self.precision)

        result = {"batch_size": self.batch_size, "params": _params(model),
                  **self._measure("vqgan", make(batch))}
        result.update(self._step_flops(model, make, batch))
        self._utilisation(result)
        del model, optimizers
        _free()
        return result

    # --------------------------------------------------------------------------------- all
    def run(self) -> dict[str, Any]:
        parts = set(self.s.parts)
        report: dict[str, Any] = {
            "machine": self.machine,
            "load_average_before": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "precision": self.precision, "batch_size": self.batch_size, "image_size": list(self.image_size),
            "latent_size": list(self.latent_size), "repeats": self.repeats, "warmup": self.warmup,
            "peak_tflops": self.peak_tflops, "cudnn_benchmark": torch.backends.cudnn.benchmark, "results": {},
        }
        results = report["results"]
        started = time.perf_counter()
        if "flops" in parts:
            self.log("[flops] per-slice forward FLOPs ...")
            results["flops"] = self.per_slice_flops()
        if parts & {"ldm", "sample"}:
            ldm = bench_models.build_ldm(self.config)
            if "ldm" in parts:
                results["ldm"] = self.diffusion_step("ldm", ldm)
            if "sample" in parts:
                results["sample"] = self.sampling(ldm.to(self.device))
            del ldm
            _free()
        if "lapt" in parts:
            lapt = bench_models.build_lapt(self.config)
            results["lapt"] = self.diffusion_step("lapt", lapt)
            results["lapt"]["decoder_checkpointing"] = bool(lapt.image_objective.decoder_checkpointing)
            del lapt
            _free()
        if "ldm" in results and "lapt" in results:
            results["lapt_over_ldm"] = results["lapt"]["median_s"] / results["ldm"]["median_s"]
        if "vqgan" in parts:
            results["vqgan"] = self.vqgan_step()
        report["targets"] = check_targets(self.config, report)
        report["wall_s"] = time.perf_counter() - started
        report["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        return report


def check_targets(config: DictConfig, report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets that this run can check: value, limit and verdict ("n/a" with a reason)."""
    targets = dict(config.benchmark.get("targets", {}) or {})
    results = report["results"]
    on_gpu = report["machine"]["device"] == "cuda"
    out: dict[str, Any] = {}

    def verdict(name: str, value: float | None, limit: float, at_most: bool, needs_gpu: bool, why: str = "") -> None:
        if value is None or (needs_gpu and not on_gpu):
            reason = why or ("needs a GPU" if needs_gpu and not on_gpu else "not measured in this run")
            out[name] = {"limit": limit, "value": value, "verdict": f"n/a ({reason})"}
            return
        ok = value <= limit if at_most else value >= limit
        out[name] = {"limit": limit, "value": value, "verdict": "pass" if ok else "FAIL"}

    if "max_lapt_over_ldm" in targets:
        verdict("lapt_over_ldm", results.get("lapt_over_ldm"), float(targets["max_lapt_over_ldm"]), True, False)
    if "max_lapt_memory_gb" in targets:
        peak = results.get("lapt", {}).get("peak_memory_bytes")
        verdict("lapt_peak_memory_gb", None if peak is None else peak / 1e9, float(targets["max_lapt_memory_gb"]),
                True, True)
    if "min_utilisation" in targets:
        value = results.get("ldm", {}).get("utilisation")
        verdict("ldm_utilisation", value, float(targets["min_utilisation"]), False, True,
                "" if value is not None or not on_gpu else "GPU not in the peak table: pass --peak_tflops")
    if "max_test_set_minutes" in targets:
        sample = results.get("sample")
        value = sample["projected"]["test_set_minutes"] if sample else None
        verdict("test_set_sampling_minutes", value, float(targets["max_test_set_minutes"]), True, True)
    return out
