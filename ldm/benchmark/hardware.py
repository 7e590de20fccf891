"""The machine a benchmark ran on, and the peak throughput its utilisation is measured against.

Peaks are NVIDIA's dense (no 2:4 sparsity) tensor-core figures from the product datasheets, in
TFLOP/s. "tf32" is what fp32 training gets on these GPUs: cuDNN convolutions use TF32 by default
(``torch.backends.cudnn.allow_tf32``), and convolutions are most of this project's FLOPs. A GPU
not in the table has no peak unless ``--peak_tflops`` gives one.
"""
from __future__ import annotations

import os
import platform
from typing import Any

import torch

# (substring of torch.cuda.get_device_name, {precision: dense TFLOP/s}); the first match wins,
# so the more specific names come first.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5 (e.g. "NVIDIA H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("A6000", {"bf16": 154.8, "tf32": 77.4, "fp32": 38.7}),  # "NVIDIA RTX A6000" (Ampere), the paper's GPU
)


def precision_key(precision: str) -> str:
    """The peak-table column for a Lightning precision string ("32", "bf16-mixed", ...)."""
    if precision.startswith("bf16"):
        return "bf16"
    if precision in ("32", "32-true"):
        return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"
    raise ValueError(f"precision {precision!r} is not one of '32', 'bf16-mixed'")


def lookup_peak_tflops(device_name: str, precision: str) -> float | None:
    """Dense peak TFLOP/s of a GPU by its name, or None when it is not in :data:`PEAK_TFLOPS`."""
    key = precision_key(precision)
    for fragment, peaks in PEAK_TFLOPS:
        if fragment.lower() in device_name.lower():
            return peaks[key]
    return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere oneDNN emulates it,
    slower than float32, and a bf16-mixed CPU benchmark says nothing about the model."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu API: guarded
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def describe_machine(device: torch.device) -> dict[str, Any]:
    """What a reader needs to compare figures: device name, cores/threads, library versions."""
    info: dict[str, Any] = {
        "device": device.type,
        "cpu": _cpu_name(),
        "cpu_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=props.name, gpu_memory_bytes=int(props.total_memory),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    else:
        info["device_name"] = f"{info['cpu_cores']}-core CPU ({info['cpu']})"
        info["cpu_bf16"] = cpu_has_bf16()
    return info
