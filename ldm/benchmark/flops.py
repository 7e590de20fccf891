"""FLOP counting with ``torch.utils.flop_counter.FlopCounterMode``.

FlopCounterMode counts matrix multiplications, convolutions and attention (2 FLOPs per
multiply-add), forward and backward, which is what "model FLOPs" means in utilisation figures;
element-wise work (normalisation, activations, the optimiser) is not counted. Torch 2.x has no
formula for the CPU kernel behind ``F.scaled_dot_product_attention``
(``_scaled_dot_product_flash_attention_for_cpu``), so the benchmark adds one with the same
convention as the GPU kernels: forward 2 bmm (q k^T and P v), backward 4 bmm.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def _sdpa_forward_flops(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> int:
    """softmax(q k^T) v for (..., Lq, d) queries and (..., Lk, d) keys/values: 2 bmm."""
    batch = 1
    for s in q[:-2]:
        batch *= s
    lq, d_qk = q[-2], q[-1]
    lk, d_v = k[-2], v[-1]
    return 2 * batch * lq * lk * d_qk + 2 * batch * lq * lk * d_v


def _sdpa_backward_flops(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...]) -> int:
    """dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q: 4 bmm (the recomputation of P is not counted)."""
    batch = 1
    for s in q[:-2]:
        batch *= s
    lq, d_qk = q[-2], q[-1]
    lk, d_v = k[-2], v[-1]
    return 2 * (2 * batch * lq * lk * d_v) + 2 * (2 * batch * lq * lk * d_qk)


def sdpa_cpu_flop(query_shape, key_shape, value_shape, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """FlopCounterMode formula for ``aten._scaled_dot_product_flash_attention_for_cpu``."""
    return _sdpa_forward_flops(tuple(query_shape), tuple(key_shape), tuple(value_shape))


def sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args: Any, out_shape=None,
                           **kwargs: Any) -> int:
    """FlopCounterMode formula for ``aten._scaled_dot_product_flash_attention_for_cpu_backward``."""
    return _sdpa_backward_flops(tuple(query_shape), tuple(key_shape), tuple(value_shape))


def extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    """Formulas FlopCounterMode lacks in this torch build (only the ops that exist here)."""
    formulas: dict[Any, Callable[..., int]] = {}
    aten = torch.ops.aten
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", sdpa_cpu_flop),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", sdpa_cpu_backward_flop)):
        if hasattr(aten, name):
            formulas[getattr(aten, name)] = formula
    return formulas


@dataclass
class FlopCount:
    """Total FLOPs of a call and their split over (sub)modules, as FlopCounterMode reports them."""

    total: int
    by_module: dict[str, int] = field(default_factory=dict)

    @property
    def gflop(self) -> float:
        return self.total / 1e9


def count_flops(fn: Callable[[], Any], depth: int = 2) -> FlopCount:
    """FLOPs of everything ``fn()`` runs (forward, and backward if it calls it).

    Eager only: a torch.compile'd module is run eagerly for the count (compiled graphs bypass the
    dispatcher mode that counts).
    """
    with _eager(), FlopCounterMode(display=False, depth=depth, custom_mapping=extra_flop_formulas()) as counter:
        fn()
    by_module = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return FlopCount(total=int(counter.get_total_flops()), by_module=by_module)


@contextmanager
def _eager() -> Iterator[None]:
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:
        yield
        return
    with set_stance("force_eager"):
        yield


def forward_flops(module: nn.Module, *inputs: Any, **kwargs: Any) -> FlopCount:
    """FLOPs of one forward pass ``module(*inputs, **kwargs)`` without a gradient graph."""
    def run() -> None:
        with torch.no_grad():
            module(*inputs, **kwargs)

    return count_flops(run)


@contextmanager
def activation_checkpointing_disabled(*roots: Any) -> Iterator[None]:
    """Turn off every ``use_checkpoint`` / ``decoder_checkpointing`` switch reachable from ``roots``.

    Recomputed activations are executed FLOPs but not model FLOPs: utilisation figures count the
    step without recomputation. (FlopCounterMode in torch 2.13 does not see the recomputation of
    non-reentrant checkpointing anyway; switching it off keeps the count right if a version does.)
    Switches are found on every submodule of an ``nn.Module`` root and on the plain attributes
    (e.g. an objective dataclass) of each module; all are restored on exit.
    """
    saved: list[tuple[Any, str, Any]] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        for name in ("use_checkpoint", "decoder_checkpointing"):
            value = getattr(type(obj), name, None)
            if isinstance(value, property):
                continue
            if isinstance(getattr(obj, name, None), bool) and getattr(obj, name):
                saved.append((obj, name, True))
                setattr(obj, name, False)
        if isinstance(obj, nn.Module):
            for attr in vars(obj).values():
                if not isinstance(attr, (nn.Module, torch.Tensor)) and hasattr(attr, "__dict__") \
                        and not isinstance(attr, type) and not callable(attr):
                    visit(attr)

    for root in roots:
        modules = root.modules() if isinstance(root, nn.Module) else [root]
        for module in modules:
            visit(module)
    try:
        yield
    finally:
        for obj, name, value in reversed(saved):
            setattr(obj, name, value)
