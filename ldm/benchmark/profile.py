"""Where a step's time goes: torch.profiler's per-operator share of one benchmark step.

Self time per operator (the time inside the operator, not in the operators it calls), summed over
``repeats`` runs after the benchmark's warm-up, as a share of the total self time, with the calls per
step. On a GPU the device's self time is used. Shares are what carry across machines and loads; the
profiled time itself includes the profiler's overhead and is not a benchmark figure.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def operator_shares(fn: Callable[[], Any], repeats: int, device: torch.device, top: int = 12
                    ) -> list[dict[str, Any]]:
    """The ``top`` operators of ``fn`` by self time: ``{"op", "share", "calls_per_step"}``, then one
    ``"(others)"`` row with the rest, so that the shares sum to 1."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(repeats):
            fn()
        if on_gpu:
            torch.cuda.synchronize(device)
    events = prof.key_averages()

    def self_time(e: Any) -> float:
        return float(getattr(e, "self_device_time_total", 0.0) if on_gpu else e.self_cpu_time_total)

    timed = sorted((e for e in events if self_time(e) > 0), key=self_time, reverse=True)
    total = sum(self_time(e) for e in timed)
    if total <= 0:
        return []
    rows = [{"op": e.key, "share": self_time(e) / total, "calls_per_step": e.count / repeats} for e in timed[:top]]
    rest = sum(self_time(e) for e in timed[top:])
    if rest > 0:
        rows.append({"op": "(others)", "share": rest / total,
                     "calls_per_step": sum(e.count for e in timed[top:]) / repeats})
    return rows


def format_shares(name: str, rows: list[dict[str, Any]]) -> list[str]:
    """Lines of a per-operator table for the report."""
    lines = [f"profile of {name}: operator, share of self time, calls per step"]
    lines += [f"  {r['op'][:48]:48s} {100 * r['share']:5.1f}%  {r['calls_per_step']:8.1f}" for r in rows]
    return lines
