"""Loading the YAML configs of a run and merging command-line overrides into them.

Overrides are OmegaConf dotlists (``model.params.lambda_image=0.05``). A key that matches nothing
is a user error, not a silent no-op: a typo such as ``model.params.lambda_imge`` would otherwise
train a model with the default lambda. A key that does not exist yet is accepted only where it is
meaningful: as a keyword argument of the ``target`` whose ``params`` it extends, or as an argument
of ``pytorch_lightning.Trainer`` under ``lightning.trainer``.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ldm.util import ConfigError, accepts_keyword, get_obj_from_str

_MISSING = object()


def load_configs(paths: Sequence[str | Path]) -> DictConfig:
    """Merge YAML files left to right (later files win), as CompVis's ``--base``."""
    configs = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        try:
            configs.append(OmegaConf.load(path))
        except (OmegaConfBaseException, ValueError, OSError) as e:  # yaml errors subclass ValueError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(f"config file {str(path)!r} could not be read: {first}") from e
    merged = OmegaConf.merge(*configs) if configs else OmegaConf.create()
    if not isinstance(merged, DictConfig):
        raise ConfigError("the merged config is not a mapping")
    return merged


_OVERRIDE = re.compile(r"^[A-Za-z_][\w\-]*(\.[\w\-]+)*=")


def is_override(token: str) -> bool:
    """Whether a command-line token is a ``key.path=value`` override."""
    return bool(_OVERRIDE.match(token))


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Take ``a.b=c`` tokens out before argparse sees them: options that take any number of values
    (``--base``, ``--patients``) or an optional one (``-t``) would otherwise swallow them."""
    args, overrides = [], []
    for token in argv:
        (overrides if is_override(token) else args).append(token)
    return args, overrides


def parse_overrides(args: Sequence[str]) -> list[tuple[str, str]]:
    """Split ``key=value`` arguments; anything else is an unknown argument."""
    pairs = []
    for arg in args:
        if "=" not in arg or arg.startswith("-") or arg.split("=", 1)[0] == "":
            raise ConfigError(f"unrecognised argument {arg!r} (overrides look like a.b.c=value)")
        key, value = arg.split("=", 1)
        pairs.append((key.strip(), value))
    return pairs


def _trainer_accepts(name: str) -> bool:
    import pytorch_lightning as pl

    return name in inspect.signature(pl.Trainer.__init__).parameters


def check_override_key(config: DictConfig, key: str) -> None:
    """Raise ConfigError unless ``key`` exists in ``config`` or may be added there."""
    if OmegaConf.select(config, key, default=_MISSING) is not _MISSING:
        return
    parts = key.split(".")
    parent_key, leaf = ".".join(parts[:-1]), parts[-1]
    parent = OmegaConf.select(config, parent_key, default=_MISSING) if parent_key else config
    if parent_key == "lightning.trainer" and _trainer_accepts(leaf):
        return
    if parent_key in ("lightning", "lightning.callbacks", "lightning.trainer") and parent is _MISSING:
        # optional sections that a config may leave out entirely
        if parent_key != "lightning.trainer" or _trainer_accepts(leaf):
            return
    if parts[-2:-1] == ["params"]:
        owner_key = ".".join(parts[:-2])
        owner = OmegaConf.select(config, owner_key, default=None) if owner_key else config
        if isinstance(owner, DictConfig) and "target" in owner:
            if accepts_keyword(owner.target, leaf):
                return
            hint = getattr(get_obj_from_str(owner.target), "unknown_keyword_hint", None)  # e.g. a GAN's
            reason = hint(leaf) if callable(hint) else None
            raise ConfigError(
                f"override {key!r} matches nothing: {owner.target} takes no parameter {leaf!r}"
                + (f": {reason}" if reason else "")
            )
    if isinstance(parent, DictConfig) and parent_key.startswith("lightning.callbacks"):
        return
    raise ConfigError(f"override {key!r} matches nothing in the config")


def apply_overrides(config: DictConfig, args: Sequence[str]) -> DictConfig:
    """Merge ``key=value`` overrides (last wins) after checking each key exists or may be added."""
    pairs = parse_overrides(args)
    for key, _ in pairs:
        check_override_key(config, key)
    if not pairs:
        return config
    try:
        dotlist = OmegaConf.from_dotlist([f"{k}={v}" for k, v in pairs])
    except OmegaConfBaseException as e:
        raise ConfigError(f"could not parse overrides: {e}") from e
    merged = OmegaConf.merge(config, dotlist)
    assert isinstance(merged, DictConfig)
    return merged


def to_container(node: DictConfig | ListConfig | None) -> dict:
    """Plain dict of a config node (resolved), for passing as keyword arguments."""
    if node is None:
        return {}
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
