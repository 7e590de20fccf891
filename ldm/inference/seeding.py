"""Per-slice initial noise that does not depend on how slices are batched.

Each slice's x_T is drawn from its own CPU generator seeded by a stable hash of (seed, patient id,
sample index k, slice index), so a slice gets the same noise whatever its batch, batch size,
device or position in the cohort. Python's ``hash()`` is salted per process and is not used.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def stable_seed(*parts: object) -> int:
    """A 63-bit integer from the parts' text (the same in every process and on every machine)."""
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def slice_noise(seed: int, patient_id: str, sample: int, slice_index: int, shape: Sequence[int]) -> "torch.Tensor":
    """Standard normal noise of ``shape`` for one slice (drawn on the CPU, float32)."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(stable_seed(seed, patient_id, sample, slice_index))
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
