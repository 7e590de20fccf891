"""The first stage of the latent diffusion model (CompVis ``ldm.models.autoencoder``).

``VQModelInterface`` is the VQGAN seen from the LDM: the latent is the quantiser's *input* (after
``quant_conv``), and decoding quantises it first. In post-training (Eqs. 6-8) the LDM decodes its
estimate z0_hat with the decoder frozen and gradients flowing back to z0_hat; quantisation is
straight-through there, and ``set_gradient_checkpointing(True)`` (or ddconfig ``use_checkpoint``)
keeps the decoder's activations out of memory.
"""
from __future__ import annotations

import torch

from taming.models.vqgan import VQModel

__all__ = ["VQModel", "VQModelInterface"]


class VQModelInterface(VQModel):
    def __init__(self, embed_dim: int, *args, **kwargs) -> None:
        super().__init__(*args, embed_dim=embed_dim, **kwargs)
        self.embed_dim = embed_dim

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) -> pre-quantisation latent h (B, embed_dim, H/f, W/f)."""
        return self.quant_conv(self.encoder(x))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """h -> image; quantised first (straight-through, so gradients reach h) unless
        ``force_not_quantize``."""
        quant = h if force_not_quantize else self.quantize(h)[0]
        return self.decoder(self.post_quant_conv(quant))
