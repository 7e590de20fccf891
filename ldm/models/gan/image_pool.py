"""The history of generated images that CycleGAN's discriminators learn from (Zhu et al. 2017,
Sec. 4, after Shrivastava et al. 2017): a buffer of the last 50 fakes reduces model oscillation.

For each image of a batch: while the pool is not full, it is stored and returned; once full, with
probability 1/2 a random stored image is returned and the new one takes its place, else the new one
is returned. The release's rule; the draws use torch's generator, which the run's seed sets. The
pool is not saved in checkpoints (neither is the release's): a resumed run refills it.
"""
from __future__ import annotations

import torch


class ImagePool:
    """``pool.query(images)`` -> a batch of the same shape, mixing in earlier fakes (pool_size 0: none)."""

    def __init__(self, pool_size: int = 50) -> None:
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size}")
        self.pool_size = int(pool_size)
        self.images: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images
        returned = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                returned.append(image)
            elif float(torch.rand(())) > 0.5:
                i = int(torch.randint(0, self.pool_size, ()))
                returned.append(self.images[i].clone())
                self.images[i] = image.clone()
            else:
                returned.append(image)
        return torch.cat(returned, 0)
