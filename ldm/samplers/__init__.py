"""Samplers, chosen by name or config: one protocol (:mod:`ldm.samplers.base`), three implementations.

``make_sampler(spec, model)`` builds the sampler a model config (``sampler:``) or a script's
``--sampler`` names: a name of :data:`SAMPLERS` or a CompVis ``{target, params}`` node (params
are passed after the model). A sampler that cannot sample the model (DDIM for a bridge, the
bridge sampler for a Gaussian diffusion) is refused here with the reason.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ldm.util import ConfigError, get_obj_from_str

SAMPLERS = {
    "ddim": "ldm.samplers.ddim.DDIMSampler",
    "dpmsolver++": "ldm.samplers.dpm_solver.DPMSolverPlusPlusSampler",
    "bridge": "ldm.samplers.bridge.BridgeSampler",
}


def sampler_class(spec: str | Mapping) -> tuple[type, dict]:
    """(class, params) for a sampler name or ``{target, params}`` node."""
    if isinstance(spec, str):
        if spec not in SAMPLERS:
            raise ConfigError(f"sampler {spec!r} is not one of {', '.join(SAMPLERS)} "
                              f"(or give a {{target, params}} node)")
        return get_obj_from_str(SAMPLERS[spec]), {}
    if isinstance(spec, Mapping) or hasattr(spec, "keys"):
        if "target" not in spec:
            raise ConfigError(f"sampler config has no 'target' key (keys: {', '.join(map(str, spec.keys()))})")
        return get_obj_from_str(spec["target"]), dict(spec.get("params") or {})
    raise ConfigError(f"sampler must be a name ({', '.join(SAMPLERS)}) or a {{target, params}} node, got {spec!r}")


def sampler_name(spec: str | Mapping) -> str:
    """The short name of a sampler spec (its class's ``name``)."""
    cls, _ = sampler_class(spec)
    return str(getattr(cls, "name", cls.__name__))


def with_sampler_params(spec: str | Mapping, **params: Any) -> dict:
    """``spec`` as a ``{target, params}`` node with ``params`` set over its own."""
    _, own = sampler_class(spec)  # also refuses an unknown name or a node without a target
    target = SAMPLERS[spec] if isinstance(spec, str) else str(spec["target"])
    return {"target": target, "params": {**own, **params}}


def make_sampler(spec: str | Mapping, model: Any) -> Any:
    """The sampler ``spec`` names, around ``model``."""
    cls, params = sampler_class(spec)
    reason = cls.unsupported(model) if hasattr(cls, "unsupported") else None
    if reason is not None:
        raise ConfigError(f"sampler {sampler_name(spec)!r} cannot sample this model: {reason}")
    return cls(model, **params)
