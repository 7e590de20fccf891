"""A ring buffer of recent encoder outputs, the pool that unused codes are re-initialised from."""
from __future__ import annotations

import torch
from torch import nn


class LatentReservoir(nn.Module):
    """Keeps up to ``capacity`` recent latent vectors (random subsets of each batch, so that the pool
    covers several batches rather than neighbouring pixels of one). Its buffers are not persistent:
    they add no state-dict keys, and a resumed run simply refills them."""

    def __init__(self, capacity: int, dim: int) -> None:
        super().__init__()
        self.capacity = int(capacity)
        self.register_buffer("pool", torch.zeros(self.capacity, dim), persistent=False)
        self.register_buffer("size", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def add(self, vectors: torch.Tensor) -> None:
        """Insert a random subset (at most a quarter of the capacity) of ``vectors`` (N, dim)."""
        take = min(vectors.shape[0], max(1, self.capacity // 4))
        chosen = vectors[torch.randperm(vectors.shape[0], device=vectors.device)[:take]]
        positions = (self.cursor + torch.arange(take, device=self.pool.device)) % self.capacity
        self.pool[positions] = chosen.detach().to(self.pool.dtype)
        self.cursor.copy_((self.cursor + take) % self.capacity)
        self.size.copy_(torch.clamp(self.size + take, max=self.capacity))

    def samples(self) -> torch.Tensor:
        return self.pool[: int(self.size)]

    def reset(self) -> None:
        self.size.zero_()
        self.cursor.zero_()
