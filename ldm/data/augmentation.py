"""Training augmentation of the reference code, applied jointly to every map of one slice.

Random flip of each in-plane axis (p = 0.5 each), then with p = 0.9 a random affine: rotation
uniform in [-pi/16, pi/16] about the slice centre and translation uniform up to 1/7 of the size on
each axis, with border padding. One sampling grid (``F.affine_grid``/``F.grid_sample``) serves all
maps: bilinear for images, nearest for masks, so masks stay binary and aligned with the images.
It runs on the unmasked [0, 1] images, before masking and the [-1, 1] mapping (DESIGN.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    flip_h: bool = False
    flip_w: bool = False
    affine: bool = False
    angle: float = 0.0  # radians
    shift_h: float = 0.0  # fraction of H
    shift_w: float = 0.0  # fraction of W


def affine_theta(angle: float, shift_h: float, shift_w: float, size: tuple[int, int],
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """The (2, 3) ``affine_grid`` matrix of a rigid pixel rotation by ``angle`` about the centre,
    then a shift by (``shift_h`` H, ``shift_w`` W) pixels (output -> input sampling positions).

    affine_grid works in normalised coordinates (x along W, y along H, each in [-1, 1]), which
    stretch a non-square slice; conjugating the rotation with diag(W, H) keeps it rigid in pixels.
    """
    h, w = size
    cos, sin = math.cos(angle), math.sin(angle)
    return torch.tensor([[cos, -sin * h / w, 2.0 * shift_w],
                         [sin * w / h, cos, 2.0 * shift_h]], dtype=dtype, device=device)


class SliceAugmentation:
    """Samples :class:`AugmentParams` and applies them to (C, H, W) images and (M, H, W) masks."""

    def __init__(self, flip_p: float = 0.5, affine_p: float = 0.9, max_rotation: float = math.pi / 16,
                 max_translation: float = 1.0 / 7.0) -> None:
        self.flip_p = flip_p
        self.affine_p = affine_p
        self.max_rotation = max_rotation
        self.max_translation = max_translation

    def sample(self, generator: torch.Generator | None = None) -> AugmentParams:
        u = torch.rand(6, generator=generator, dtype=torch.float64).tolist()
        affine = u[2] < self.affine_p
        return AugmentParams(flip_h=u[0] < self.flip_p, flip_w=u[1] < self.flip_p, affine=affine,
                             angle=(2 * u[3] - 1) * self.max_rotation if affine else 0.0,
                             shift_h=(2 * u[4] - 1) * self.max_translation if affine else 0.0,
                             shift_w=(2 * u[5] - 1) * self.max_translation if affine else 0.0)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_augmentation(images, masks, self.sample(generator))


def apply_augmentation(images: torch.Tensor, masks: torch.Tensor,
                       params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, then warp (bilinear images, nearest masks, border padding) with one shared grid."""
    dims = [d for d, flip in ((-2, params.flip_h), (-1, params.flip_w)) if flip]
    if dims:
        images, masks = torch.flip(images, dims), torch.flip(masks, dims)
    if not params.affine:
        return images, masks
    size = tuple(images.shape[-2:])
    theta = affine_theta(params.angle, params.shift_h, params.shift_w, size, images.dtype, images.device)
    grid = F.affine_grid(theta[None], [1, 1, *size], align_corners=False)
    images = F.grid_sample(images[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    masks = F.grid_sample(masks[None].to(images.dtype), grid, mode="nearest", padding_mode="border",
                          align_corners=False)[0]
    return images, masks
