"""Loading autoencoder weights from a checkpoint (``VQModel(ckpt_path=...)``).

The architecture (encoder, decoder, codebook, quant convs) must match exactly: a missing or extra
key there is an error, not a silently half-loaded model (CompVis loads with ``strict=False``).
The training loss is looser, because the same autoencoder is built with and without it:
- an LDM builds the first stage with ``lossconfig: torch.nn.Identity``: the checkpoint's
  ``loss.*`` keys are dropped;
- a checkpoint without discriminator (or LPIPS) weights leaves that part freshly initialised;
- ``loss.perceptual_loss.*`` of a CompVis checkpoint is dropped when the model has no LPIPS.
"""
from __future__ import annotations

from collections.abc import Iterable

from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from ldm.util import ConfigError, load_state_dict

_OPTIONAL_PARTS = ("loss.discriminator.", "loss.perceptual_loss.")


def _part(key: str) -> str | None:
    return next((p for p in _OPTIONAL_PARTS if key.startswith(p)), "loss." if key.startswith("loss.") else None)


def load_autoencoder_weights(model: nn.Module, path: str, ignore_keys: Iterable[str] = ()) -> None:
    """Load ``path`` into ``model`` (see module docstring); ``ignore_keys`` are key prefixes to skip."""
    ignore = tuple(ignore_keys or ())
    checkpoint = {k: v for k, v in load_state_dict(path).items() if not (ignore and k.startswith(ignore))}
    own = model.state_dict()

    dropped = [k for k in checkpoint if k not in own and _part(k) is not None]
    for k in dropped:
        del checkpoint[k]
    parts_in_checkpoint = {_part(k) for k in checkpoint}
    missing = [k for k in own if k not in checkpoint
               and not (ignore and k.startswith(ignore))
               and not (_part(k) is not None and _part(k) not in parts_in_checkpoint)]
    unexpected = [k for k in checkpoint if k not in own]
    if missing or unexpected:
        detail = "; ".join(s for s in (
            f"missing {len(missing)} keys (first {missing[0]!r})" if missing else "",
            f"unexpected {len(unexpected)} keys (first {unexpected[0]!r})" if unexpected else "") if s)
        raise ConfigError(f"checkpoint {path!r} does not match the autoencoder: {detail}")
    for k, v in checkpoint.items():
        if v.shape != own[k].shape:
            raise ConfigError(f"checkpoint {path!r}: {k!r} has shape {tuple(v.shape)}, "
                              f"the model expects {tuple(own[k].shape)}")
    model.load_state_dict(checkpoint, strict=False)
    fresh = sorted({_part(k) for k in own if k not in checkpoint and _part(k)})
    rank_zero_info(f"Restored autoencoder from {path} ({len(checkpoint)} tensors"
                   + (f"; dropped {len(dropped)} unused loss tensors" if dropped else "")
                   + (f"; freshly initialised: {', '.join(p.rstrip('.') for p in fresh)}" if fresh else "") + ")")
