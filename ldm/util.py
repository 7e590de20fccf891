"""Config-driven construction and small shared helpers, in the CompVis convention.

A config node is a mapping with a ``target`` (a dotted import path) and optional ``params``
(keyword arguments). ``instantiate_from_config`` builds the object. Errors a user can make in a
config raise :class:`ConfigError`, which ``main.py`` turns into one line and exit code 2.
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

import torch


class ConfigError(Exception):
    """A mistake in a user's config or command line (reported as one line, exit code 2)."""


def get_obj_from_str(string: str, reload: bool = False) -> Any:
    """Import ``package.module.Name`` and return ``Name``.

    Raises ConfigError naming the target when the module does not import or lacks the name.
    """
    if not isinstance(string, str) or "." not in string:
        raise ConfigError(f"target {string!r} is not a dotted import path like 'package.module.Class'")
    module_name, cls_name = string.rsplit(".", 1)
    try:
        module = importlib.import_module(module_name)
        if reload:
            module = importlib.reload(module)
    except ModuleNotFoundError as e:
        raise ConfigError(f"target {string!r}: module {module_name!r} does not import ({e})") from e
    except ImportError as e:
        raise ConfigError(f"target {string!r}: module {module_name!r} failed to import ({e})") from e
    try:
        return getattr(module, cls_name)
    except AttributeError as e:
        raise ConfigError(f"target {string!r}: module {module_name!r} has no attribute {cls_name!r}") from e


def instantiate_from_config(config: Mapping | Any, **extra: Any) -> Any:
    """Build ``target(**params, **extra)`` from a ``{target, params}`` config node.

    The CompVis sentinels ``__is_first_stage__`` and ``__is_unconditional__`` return None.
    """
    if config is None:
        raise ConfigError("expected a config node with a 'target' key, got nothing")
    if isinstance(config, str) and config in ("__is_first_stage__", "__is_unconditional__"):
        return None
    if not isinstance(config, Mapping) and not hasattr(config, "keys"):
        raise ConfigError(f"expected a config node with a 'target' key, got {config!r}")
    if "target" not in config:
        keys = ", ".join(str(k) for k in config.keys()) or "none"
        raise ConfigError(f"config node has no 'target' key (keys: {keys})")
    params = config.get("params", None) or {}
    if hasattr(params, "items"):
        params = dict(params.items())
    cls = get_obj_from_str(config["target"])
    _check_keywords(config["target"], cls, [*params, *extra])
    return cls(**params, **extra)


def accepted_keywords(cls: Any, after: type | None = None) -> frozenset[str] | None:
    """The keyword arguments ``cls(...)`` accepts, or None when any would do.

    Classes take their own parameters by name and pass the rest on with ``**kwargs`` to the next
    ``__init__`` in the MRO (the one way constructor arguments travel in this project), so the
    names are collected along the MRO until an ``__init__`` without ``**kwargs``. With ``after``,
    only the classes after it in ``cls``'s MRO count (what a mixin may pass on).
    """
    if isinstance(cls, type):
        mro = inspect.getmro(cls)
        mro = mro[mro.index(after) + 1:] if after is not None else mro
        inits = [k.__dict__["__init__"] for k in mro if "__init__" in k.__dict__]
    else:
        inits = [cls]
    names: set[str] = set()
    for init in inits:
        try:
            parameters = inspect.signature(init).parameters
        except (TypeError, ValueError):
            return None  # builtins without a signature: let the constructor decide
        names |= {n for n, p in parameters.items()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return frozenset(names)
    return None


def accepts_keyword(target: str | Any, name: str) -> bool:
    """Whether the class (or ``target`` import path) takes the keyword argument ``name``."""
    names = accepted_keywords(get_obj_from_str(target) if isinstance(target, str) else target)
    return names is None or name in names


def _check_keywords(target: str, cls: Any, names: list[str]) -> None:
    """A params key the target does not take is a config typo: name it instead of a TypeError."""
    accepted = accepted_keywords(cls)
    unknown = [] if accepted is None else [n for n in names if n not in accepted]
    if unknown:
        # a class may say why a key is wrong (e.g. a GAN given a diffusion sampler option)
        hint = getattr(cls, "unknown_keyword_hint", None)
        reason = hint(unknown[0]) if callable(hint) else None
        raise ConfigError(f"target {target!r} takes no parameter {unknown[0]!r}" + (f": {reason}" if reason else ""))


def count_params(model: torch.nn.Module, verbose: bool = False, trainable_only: bool = False) -> int:
    """Number of parameters of ``model`` (optionally only trainable ones), printed in millions."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
    if verbose:
        print(f"{model.__class__.__name__} has {total * 1e-6:.2f} M parameters.")
    return total


def default(value: Any, fallback: Any) -> Any:
    """``value`` unless it is None, else ``fallback`` (called if callable)."""
    if value is not None:
        return value
    return fallback() if callable(fallback) else fallback


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Any:
    """Read a checkpoint file safely (``weights_only=True``: a file cannot run code).

    Raises ConfigError naming the path when it does not exist, or cannot be read as plain data
    (corrupt, truncated, or holding pickled objects).
    """
    import os
    import pickle

    if not os.path.isfile(path):
        raise ConfigError(f"checkpoint {path!r} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"checkpoint {path!r} cannot be read as plain data (corrupt, truncated, or holding "
                          f"objects that would run code): {first[:200]}") from e


def load_state_dict(path: str, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint's ``state_dict``, read with :func:`load_checkpoint`.

    Lightning checkpoints hold the weights under ``state_dict``; a bare state dict is returned as is.
    """
    ckpt = load_checkpoint(path, map_location)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        return ckpt["state_dict"]
    return ckpt
