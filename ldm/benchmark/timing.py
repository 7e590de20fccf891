"""Wall-clock timing (median over repeats after warm-up) and peak memory, on CPU and CUDA.

CUDA kernels run asynchronously, so every timed call is bracketed by ``torch.cuda.synchronize``;
the peak is ``torch.cuda.max_memory_allocated`` over the timed repeats (tensors only, not the
caching allocator's reserve). On CPU the peak is the process's resident set size: Linux's
high-water mark (``VmHWM``) is reset through ``/proc/self/clear_refs`` before the timed repeats so
that each measurement gets its own peak; where that is not possible (another OS, a restricted
/proc) the figure is ``getrusage``'s peak for the whole process so far, and says so.
"""
from __future__ import annotations

import re
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

CUDA_MEMORY = "cuda max_memory_allocated"
RSS_WINDOW = "process peak RSS during the timed repeats"
RSS_PROCESS = "process peak RSS since start (could not reset the high-water mark)"


def synchronize(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _read_vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _reset_vm_hwm() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _read_vm_hwm_bytes() is not None


def _rusage_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, kB on Linux


class PeakMemory:
    """Context manager: ``peak_bytes`` and ``kind`` of the memory peak inside the ``with`` block."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.peak_bytes: int | None = None
        self.kind = ""
        self._window = False

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = CUDA_MEMORY
        else:
            self._window = _reset_vm_hwm()
            self.kind = RSS_WINDOW if self._window else RSS_PROCESS
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._window:
            self.peak_bytes = _read_vm_hwm_bytes()
        else:
            self.peak_bytes = _rusage_peak_bytes()


@dataclass
class Timing:
    """Seconds per call: the median and every timed repeat, plus the memory peak of the repeats."""

    median_s: float
    times_s: list[float] = field(default_factory=list)
    warmup: int = 0
    peak_memory_bytes: int | None = None
    memory_kind: str = ""

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def max_s(self) -> float:
        return max(self.times_s)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(min_s=self.min_s, max_s=self.max_s)
        return out


def measure(fn: Callable[[], Any], device: torch.device | str, repeats: int = 5, warmup: int = 2,
            on_repeat: Callable[[int, float], None] | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; the median of the timed calls.

    Warm-up absorbs one-off costs (allocator growth, optimiser state creation, cuDNN autotuning,
    torch.compile). ``on_repeat(i, seconds)`` is called after each timed call (progress display).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    synchronize(device)
    times: list[float] = []
    with PeakMemory(device) as memory:
        for i in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
            if on_repeat is not None:
                on_repeat(i, times[-1])
    return Timing(median_s=statistics.median(times), times_s=times, warmup=warmup,
                  peak_memory_bytes=memory.peak_bytes, memory_kind=memory.kind)
