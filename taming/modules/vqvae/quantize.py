"""Vector quantiser of the VQGAN (CompVis ``VectorQuantizer2``, key ``embedding.weight``).

Loss placement (``legacy``):
- ``legacy=True`` (CompVis default, used by the reference release):
  L = mean((sg[z_q] - z)^2) + beta * mean((z_q - sg[z])^2), i.e. beta weights the codebook term;
- ``legacy=False`` (the VQ-VAE paper, van den Oord et al. 2017, Eq. 3):
  L = mean((z_q - sg[z])^2) + beta * mean((sg[z_q] - z)^2), beta weights the commitment term.
The output uses the straight-through estimator z + sg[z_q - z], so the gradient of anything computed
from z_q reaches z (and the encoder) unchanged.

Codebook collapse: with ``reinit_unused_codes`` the quantiser counts code assignments while training
and :meth:`reinit_unused_codes_` replaces the codes unused since its last call by random recent
encoder outputs. The caller (``VQModel``) decides how often.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from taming.modules.vqvae.codebook_usage import code_counts, perplexity_from_counts
from taming.modules.vqvae.reservoir import LatentReservoir


class VectorQuantizer(nn.Module):
    # distances per chunk of rows in nearest_codes, in float32 elements: 16 MB on a CPU (measured
    # fastest on the 2-core CI machine), 256 MB on a GPU (few launches, little memory)
    distance_chunk_elements: ClassVar[dict[str, int]] = {"cpu": 2 ** 22, "cuda": 2 ** 26}

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25, remap: str | None = None,
                 unknown_index: str | int = "random", sane_index_shape: bool = False, legacy: bool = True,
                 reinit_unused_codes: bool = False, reservoir_size: int | None = None) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.legacy = int(n_e), int(e_dim), float(beta), bool(legacy)
        self.embedding = nn.Embedding(self.n_e, self.e_dim)
        self.embedding.weight.data.uniform_(-1.0 / self.n_e, 1.0 / self.n_e)

        self.remap = remap
        if remap is not None:
            # a persistent buffer, as in CompVis (checkpoints trained with remap carry quantize.used)
            self.register_buffer("used", torch.tensor(np.load(remap)))
            self.re_embed = int(self.used.shape[0])
            self.unknown_index = unknown_index
            if unknown_index == "extra":
                self.unknown_index = self.re_embed
                self.re_embed += 1
        else:
            self.re_embed = self.n_e
        self.sane_index_shape = sane_index_shape

        self.reinit_unused = bool(reinit_unused_codes)
        if self.reinit_unused:
            self.reservoir = LatentReservoir(reservoir_size or max(self.n_e, 1024), self.e_dim)
            self.register_buffer("window_counts", torch.zeros(self.n_e), persistent=False)

    # -- index remapping (CompVis) -------------------------------------------------------------
    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        ishape = inds.shape
        inds = inds.reshape(ishape[0], -1)
        used = self.used.to(inds)
        match = (inds[:, :, None] == used[None, None, ...]).long()
        new = match.argmax(-1)
        unknown = match.sum(2) < 1
        if self.unknown_index == "random":
            new[unknown] = torch.randint(0, self.re_embed, size=new[unknown].shape, device=new.device)
        else:
            new[unknown] = int(self.unknown_index)
        return new.reshape(ishape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        ishape = inds.shape
        inds = inds.reshape(ishape[0], -1).clone()
        used = self.used.to(inds)
        if self.re_embed > self.used.shape[0]:  # the extra "unknown" token maps to code 0
            inds[inds >= self.used.shape[0]] = 0
        back = torch.gather(used[None, :].expand(inds.shape[0], -1), 1, inds)
        return back.reshape(ishape)

    # -- quantisation --------------------------------------------------------------------------
    @torch.no_grad()  # indices only: no graph through the codebook's distances
    def nearest_codes(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``z_flat`` (N, e_dim), in float32.

        argmin_j ||z - e_j||^2 = argmin_j (||e_j||^2 - 2 z.e_j): the ||z||^2 term is the same for
        every code and is left out. Rows go in chunks of ``distance_chunk_elements`` distances, so
        the N x n_e matrix is never held whole: at paper scale (batch 48 of 48 x 56 latents, 8192
        codes) it would take 4.2 GB; on the 2-core CPU, 2688 rows (the small benchmark's batch)
        take 27 ms in chunks against 95 ms for the whole matrix plus ||z||^2.
        """
        e = self.embedding.weight.float()
        e_sq, e_t = (e * e).sum(1)[None, :], e.t()
        sizes = self.distance_chunk_elements
        elements = sizes[z_flat.device.type] if z_flat.device.type in sizes else max(sizes.values())
        rows = max(1, elements // self.n_e)
        return torch.cat([torch.addmm(e_sq, part, e_t, beta=1.0, alpha=-2.0).argmin(1)
                          for part in z_flat.split(rows)])

    def codebook_loss(self, z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
        """The VQ objective; see the module docstring for where beta goes."""
        commitment = torch.mean((z_q.detach() - z) ** 2)
        codebook = torch.mean((z_q - z.detach()) ** 2)
        if self.legacy:
            return commitment + self.beta * codebook
        return codebook + self.beta * commitment

    def forward(self, z: torch.Tensor, temp=None, rescale_logits: bool = False, return_logits: bool = False):
        """z (B, e_dim, H, W) -> (z_q, loss, (perplexity, None, indices)).

        ``indices`` are (B*H*W,) or, with ``sane_index_shape``, (B, H, W)."""
        if temp not in (None, 1.0) or rescale_logits or return_logits:
            raise ValueError("temp/rescale_logits/return_logits exist only for Gumbel-quantiser compatibility")
        if z.dim() != 4 or z.shape[1] != self.e_dim:
            raise ValueError(f"VectorQuantizer expects (B, {self.e_dim}, H, W), got {tuple(z.shape)}")
        in_dtype = z.dtype
        b, _, h, w = z.shape
        with torch.autocast(device_type=z.device.type, enabled=False):
            # distances in bf16 would pick wrong codes: quantise in float32
            z_bhwc = z.float().permute(0, 2, 3, 1)
            z_flat = z_bhwc.reshape(-1, self.e_dim)
            indices = self.nearest_codes(z_flat.detach())
            z_q = self.embedding(indices).float().view(z_bhwc.shape)
            loss = self.codebook_loss(z_bhwc, z_q)
            z_q = z_bhwc + (z_q - z_bhwc).detach()  # straight-through
            z_q = z_q.permute(0, 3, 1, 2).to(in_dtype)
        counts = code_counts(indices, self.n_e)
        perplexity = perplexity_from_counts(counts)
        if self.training and self.reinit_unused:
            with torch.no_grad():
                self.window_counts += counts
                self.reservoir.add(z_flat.detach())

        if self.remap is not None:
            indices = self.remap_to_used(indices.reshape(b, -1)).reshape(-1, 1)
        if self.sane_index_shape:
            indices = indices.reshape(b, h, w)
        return z_q, loss, (perplexity, None, indices)

    def get_codebook_entry(self, indices: torch.Tensor, shape: tuple[int, int, int, int] | None) -> torch.Tensor:
        """Codes for ``indices``; with ``shape`` = (B, H, W, C) the result is (B, C, H, W)."""
        if self.remap is not None:
            indices = self.unmap_to_all(indices.reshape(shape[0], -1)).reshape(-1)
        z_q = self.embedding(indices.reshape(-1))
        if shape is not None:
            z_q = z_q.view(shape).permute(0, 3, 1, 2).contiguous()
        return z_q

    # -- codebook re-initialisation ------------------------------------------------------------
    @torch.no_grad()
    def reinit_unused_codes_(self) -> int:
        """Replace codes that were not assigned since the last call by random recent encoder outputs
        (plus a little noise, so that two revived codes never coincide). Returns how many.

        Under DDP the counts are summed over ranks and rank 0's new codebook is broadcast, so every
        rank keeps the same codebook."""
        if not self.reinit_unused:
            raise RuntimeError("reinit_unused_codes_ needs VectorQuantizer(reinit_unused_codes=True)")
        counts = self.window_counts.clone()
        distributed = dist.is_available() and dist.is_initialized()
        if distributed:
            dist.all_reduce(counts)
        dead = counts == 0
        n_dead = int(dead.sum())
        pool = self.reservoir.samples()
        if n_dead and pool.shape[0] > 0:
            chosen = pool[torch.randint(pool.shape[0], (n_dead,), device=pool.device)]
            scale = pool.std(dim=0, keepdim=True).clamp_min(1e-6) if pool.shape[0] > 1 else 1e-3
            chosen = chosen + 1e-2 * scale * torch.randn_like(chosen)
            weight = self.embedding.weight
            weight[dead] = chosen.to(weight.dtype)
            if distributed:
                dist.broadcast(weight.data, src=0)
        else:
            n_dead = 0
        self.window_counts.zero_()
        return n_dead


# CompVis name: latent-diffusion imports ``VectorQuantizer2 as VectorQuantizer``
VectorQuantizer2 = VectorQuantizer
