"""Codebook statistics: perplexity and the fraction of codes in use (codebook collapse monitor)."""
from __future__ import annotations

import torch


def code_counts(indices: torch.Tensor, n_embed: int) -> torch.Tensor:
    """How often each of the ``n_embed`` codes occurs in ``indices`` (any shape), as float32."""
    return torch.bincount(indices.reshape(-1).long(), minlength=n_embed).float()


def perplexity_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the empirical code distribution: 1 when one code is used, n_embed when all
    codes are used equally often."""
    p = counts.float() / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-10))).sum())


class CodeUsage:
    """Accumulates code counts over many batches (e.g. a validation epoch)."""

    def __init__(self, n_embed: int) -> None:
        self.n_embed = n_embed
        self.counts: torch.Tensor | None = None

    def update(self, indices: torch.Tensor) -> None:
        counts = code_counts(indices.detach(), self.n_embed)
        self.counts = counts if self.counts is None else self.counts.to(counts.device) + counts

    def reset(self) -> None:
        self.counts = None

    @property
    def empty(self) -> bool:
        return self.counts is None

    def perplexity(self) -> torch.Tensor:
        return perplexity_from_counts(self._counts())

    def fraction_used(self) -> torch.Tensor:
        return (self._counts() > 0).float().mean()

    def _counts(self) -> torch.Tensor:
        return torch.zeros(self.n_embed) if self.counts is None else self.counts
