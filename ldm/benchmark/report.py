"""The benchmark's results as a plain-text table (the JSON file holds every number)."""
from __future__ import annotations

from typing import Any

from ldm.benchmark.profile import format_shares

_ROWS = (("ldm", "stage-2 training step"), ("lapt", "post-training step"), ("vqgan", "VQGAN step (both opt.)"),
         ("sample", "DDIM sampling + decode"))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.1f}"


def _mem(n: int | None) -> str:
    return "-" if n is None else f"{n / 2 ** 30:.2f} GiB"


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_report(report: dict[str, Any]) -> str:
    """A table of medians, spread, memory and FLOP/s, then the derived figures and targets."""
    machine = report["machine"]
    lines = [f"Benchmark on {machine['device_name']} (torch {machine['torch']}, {machine['torch_threads']} threads), "
             f"precision {report['precision']}, batch {report['batch_size']}, image {report['image_size']} "
             f"-> latent {report['latent_size']}, median of {report['repeats']} after {report['warmup']} warm-up"]
    load = report.get("load_average_before")
    if load:
        lines.append(f"load average before: {load[0]:.2f} (1 min); after: {report['load_average_after'][0]:.2f}")
    results = report["results"]
    header = (f"{'':26s} {'median ms':>11s} {'min-max ms':>19s} {'peak memory':>12s} {'GFLOP':>10s} "
              f"{'TFLOP/s':>8s} {'% peak':>7s}")
    lines += ["", header, "-" * len(header)]
    for key, label in _ROWS:
        r = results.get(key)
        if r is None:
            continue
        flop = r.get("model_flop_per_step", r.get("model_flop_per_batch"))
        spread = f"{_ms(r['min_s'])}-{_ms(r['max_s'])}"
        util = r.get("utilisation")
        lines.append(f"{label:26s} {_ms(r['median_s']):>11s} {spread:>19s} {_mem(r.get('peak_memory_bytes')):>12s} "
                     f"{_opt(None if flop is None else flop / 1e9, ',.1f'):>10s} "
                     f"{_opt(r.get('achieved_tflops'), '.3f'):>8s} {_opt(None if util is None else 100 * util, '.1f'):>7s}")
    mem_kind = next((r.get("memory_kind") for r in results.values() if isinstance(r, dict) and r.get("memory_kind")),
                    None)
    if mem_kind:
        lines.append(f"peak memory: {mem_kind}")
    lines.append("")
    if "lapt_over_ldm" in results:
        lines.append(f"post-training / stage-2 step time: {results['lapt_over_ldm']:.2f} x")
        flops = [results[k].get("model_flop_per_step") for k in ("lapt", "ldm")]
        if all(flops):
            lines.append(f"post-training / stage-2 model FLOPs: {flops[0] / flops[1]:.2f} x")
    for key in ("ldm", "lapt"):
        if key in results and "ema_update_median_s" in results[key]:
            lines.append(f"{key}: EMA update {_ms(results[key]['ema_update_median_s'])} ms of the step")
    if "sample" in results:
        s = results["sample"]
        p = s["projected"]
        lines.append(f"sampling: {s['slices_per_s']:.3f} slices/s at {s['steps']} DDIM steps (batch {s['batch_size']}, "
                     f"decode {_ms(s['decode_median_s'])} ms per batch); projected {p['slices']} slices at "
                     f"{p['steps']} steps: {p['test_set_minutes']:.1f} min")
        for name, b in s.get("by_sampler", {}).items():
            lines.append(f"  {name}: {b['slices_per_s']:.3f} slices/s at {b['steps']} steps, decode included "
                         f"({_ms(b['median_s'])} ms per batch of {s['batch_size']})")
    if "flops" in results:
        f = results["flops"]
        lines.append(f"UNet {f['unet_params'] / 1e6:.2f} M parameters, {f['unet_forward_gflop_per_slice']:.2f} GFLOP "
                     f"per slice forward; decoder {f['decoder_params'] / 1e6:.2f} M, "
                     f"{f['decoder_forward_gflop_per_slice']:.2f} GFLOP; encoder "
                     f"{f['encoder_forward_gflop_per_slice']:.2f} GFLOP")
        lines.append(f"FLOP estimate of post-training / stage 2: {f['estimated_lapt_over_ldm_flops']:.2f} x "
                     f"({f['estimated_lapt_over_ldm_flops_decoder_checkpointing']:.2f} x with decoder checkpointing)")
    for key, label in _ROWS:
        rows = (results.get(key) or {}).get("profile")
        if rows:
            lines += ["", *format_shares(label, rows)]
    if report.get("targets"):
        lines.append("")
        lines.append("targets:")
        for name, t in report["targets"].items():
            value = "-" if t["value"] is None else f"{t['value']:.3g}"
            lines.append(f"  {name:28s} value {value:>8s}  limit {t['limit']:<6g} {t['verdict']}")
    return "\n".join(lines)
