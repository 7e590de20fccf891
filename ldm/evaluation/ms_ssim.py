"""MS-SSIM (torchmetrics) with a scale set that fits the image size.

torchmetrics' default MS-SSIM uses Wang et al.'s 5 scales with an 11 x 11 Gaussian window: the
coarsest scale is the image down-sampled 2^4 times and must still be wider than the window, so
images need more than (11 - 1) * 2^4 = 160 pixels per side (torchmetrics checks
``size // (n_scales - 1)^2 > kernel - 1``). Paper-scale slices (192 x 224) meet this and are scored
with exactly the default settings. Smaller images (the CPU demo) use the largest number of scales
that fits, keep the *finest* scales' weights of Wang et al. (the dropped ones are the coarsest) and
renormalise them to sum to 1, so that the score stays a weighted geometric mean of similarities in
[0, 1]; with one scale this is plain SSIM. Below 11 pixels the Gaussian window shrinks to the
largest odd size that fits (torchmetrics sizes a Gaussian window from sigma, 2 * int(3.5 sigma +
0.5) + 1, so sigma shrinks with it). The scale set used is reported with the results.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

WANG_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
DEFAULT_KERNEL = 11
DEFAULT_SIGMA = 1.5


@dataclass(frozen=True)
class ScaleSet:
    """The MS-SSIM settings used for one image size."""

    betas: tuple[float, ...]
    kernel_size: int
    sigma: float = DEFAULT_SIGMA

    @property
    def n_scales(self) -> int:
        return len(self.betas)

    def describe(self) -> str:
        betas = ", ".join(f"{b:.4f}" for b in self.betas)
        return (f"{self.n_scales} scale(s), {self.kernel_size}x{self.kernel_size} Gaussian window "
                f"(sigma {self.sigma:.3g}), betas ({betas})")


def _fits(size: int, n_scales: int, kernel: int) -> bool:
    coarsest = size // 2 ** (n_scales - 1)
    torchmetrics_limit = size // max(1, n_scales - 1) ** 2  # torchmetrics' own (stricter for 4 scales) check
    return size >= 2 ** n_scales and coarsest > kernel - 1 and torchmetrics_limit > kernel - 1


def scale_set_for(height: int, width: int) -> ScaleSet:
    """The largest scale set of Wang et al. that torchmetrics accepts for ``height x width`` images."""
    size = min(height, width)
    if size < 3:
        raise ValueError(f"MS-SSIM needs images of at least 3 x 3 pixels, got {height} x {width}")
    for n_scales in range(len(WANG_BETAS), 0, -1):
        if _fits(size, n_scales, DEFAULT_KERNEL):
            kept = WANG_BETAS[:n_scales]
            if n_scales == len(WANG_BETAS):
                return ScaleSet(WANG_BETAS, DEFAULT_KERNEL)  # torchmetrics' defaults, untouched
            total = sum(kept)
            return ScaleSet(tuple(b / total for b in kept), DEFAULT_KERNEL)
    kernel = size if size % 2 == 1 else size - 1  # odd, at most the image (torchmetrics crops the padding)
    radius = (kernel - 1) // 2
    return ScaleSet((1.0,), kernel, sigma=radius / 3.5)


def ms_ssim(preds: torch.Tensor, target: torch.Tensor, scale_set: ScaleSet | None = None) -> torch.Tensor:
    """Per-image MS-SSIM of (N, C, H, W) images in [0, 1] (``data_range=1``), shape (N,)."""
    if preds.shape != target.shape or preds.ndim != 4:
        raise ValueError(f"MS-SSIM needs two (N, C, H, W) tensors of one shape, got {tuple(preds.shape)} "
                         f"and {tuple(target.shape)}")
    scale_set = scale_set or scale_set_for(*preds.shape[-2:])
    return multiscale_structural_similarity_index_measure(
        preds.float(), target.float(), kernel_size=scale_set.kernel_size, sigma=scale_set.sigma,
        betas=scale_set.betas, data_range=1.0, reduction="none",
    )
