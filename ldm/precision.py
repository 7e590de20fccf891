"""Lightning's precision settings as a plain forward context, for code that runs without a Trainer.

Training gets bf16 autocast from ``lightning.trainer.precision: bf16-mixed``; sampling and the
benchmark run the models directly and use the same plugin's forward context here, so that the
three run the same kernels. torch and Lightning are imported on first use, so that a command
line can offer ``PRECISIONS`` without paying for them in ``--help``.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("32", "bf16-mixed")


def precision_context(device: torch.device | str, precision: str) -> contextlib.AbstractContextManager:
    """The forward context of Lightning's precision setting (autocast for ``bf16-mixed``)."""
    if precision in ("32", "32-true"):
        return contextlib.nullcontext()
    if precision != "bf16-mixed":
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    import torch
    from pytorch_lightning.plugins.precision import MixedPrecision

    return MixedPrecision("bf16-mixed", torch.device(device).type).forward_context()
