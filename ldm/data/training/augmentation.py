"""Training augmentation of the reference code, applied jointly to every map of one slice.

The reference (its ``get_train_transforms``, MONAI) augments the VQGAN, the cLDM and the
post-training data alike: ``RandFlipd`` on each in-plane axis (p = 0.5 each), then
``RandAffined`` with p = 0.9, rotation uniform in [-pi/16, pi/16], translation uniform in
[-32, 32] pixels on each axis (at 192 x 224), scale 1 + uniform(-0.001, 0.001) on each axis,
border padding, bilinear for images and nearest for masks. MONAI composes the affine as
rotate @ translate @ scale in centred pixel coordinates (output pixel p samples the input at
R (S p + t)); so does :func:`affine_theta`. One sampling grid (``F.affine_grid`` /
``F.grid_sample``) serves all maps of a slice, so masks stay binary and aligned with the images.

It runs before the intensity clipping, as in the reference: preprocessing stores the maps scaled
but unclipped (``ldm/data/preprocessing/pipeline.py``), and the datasets clip, mask and map to [-1, 1]
after warping (docs/data.md).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

# The reference's RandAffined translate_range, in pixels at its 192 x 224 slices.
REFERENCE_TRANSLATION_PX = 32.0
REFERENCE_SIZE = (192, 224)


@dataclass(frozen=True)
class AugmentParams:
    """One draw: flips, then (if ``affine``) the warp. Shifts in pixels, scales as factors."""

    flip_h: bool = False
    flip_w: bool = False
    affine: bool = False
    angle: float = 0.0  # radians
    shift_h: float = 0.0  # pixels along H (rows), before the rotation (MONAI's order)
    shift_w: float = 0.0  # pixels along W (columns)
    scale_h: float = 1.0
    scale_w: float = 1.0


def affine_theta(params: AugmentParams, size: tuple[int, int], dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """The (2, 3) ``affine_grid`` matrix of ``params``' warp on an (H, W) slice.

    In centred pixel coordinates (row, column) the output pixel p samples the input at
    R (S p + t), R the rotation by ``angle``, S = diag(scale_h, scale_w), t = (shift_h, shift_w)
    (MONAI's rotate @ translate @ scale). ``affine_grid`` works in normalised coordinates (x along
    W, y along H, each in [-1, 1] with align_corners=False, i.e. n = 2 c / N for a centred pixel
    coordinate c); conjugating with D = diag(W/2, H/2) keeps the warp rigid in pixels on a
    non-square slice.
    """
    h, w = size
    cos, sin = math.cos(params.angle), math.sin(params.angle)
    # (row, column) rotation as MONAI's create_rotate; in (x, y) = (column, row) order it reads:
    rot_xy = ((cos, sin), (-sin, cos))
    scale_xy = (params.scale_w, params.scale_h)
    shift_xy = (params.shift_w, params.shift_h)
    half = (w / 2.0, h / 2.0)
    theta = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    for i in range(2):
        for j in range(2):
            theta[i][j] = rot_xy[i][j] * scale_xy[j] * half[j] / half[i]
        theta[i][2] = sum(rot_xy[i][j] * shift_xy[j] for j in range(2)) / half[i]
    return torch.tensor(theta, dtype=dtype, device=device)


def _pair(value: float | Sequence[float], name: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        value = (float(value), float(value))
    values = tuple(float(v) for v in value)
    if len(values) != 2 or min(values) < 0:
        raise ValueError(f"augmentation {name} must be a number >= 0 or a pair (H, W) of them, got {value!r}")
    return values  # type: ignore[return-value]


class SliceAugmentation:
    """Samples :class:`AugmentParams` and applies them to (C, H, W) images and (M, H, W) masks.

    The defaults are the reference's transforms at 192 x 224. ``max_translation`` is in pixels
    (a number, or (H, W)); for another slice size scale it with the size (the demo's 64 x 64:
    32 x 64 / 192).
    """

    def __init__(self, flip_p: float = 0.5, affine_p: float = 0.9, max_rotation: float = math.pi / 16,
                 max_translation: float | Sequence[float] = REFERENCE_TRANSLATION_PX,
                 max_scale: float | Sequence[float] = 0.001) -> None:
        for name, p in (("flip_p", flip_p), ("affine_p", affine_p)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"augmentation {name} must be a probability in [0, 1], got {p!r}")
        if float(max_rotation) < 0:
            raise ValueError(f"augmentation max_rotation must be >= 0 (radians), got {max_rotation!r}")
        self.flip_p = float(flip_p)
        self.affine_p = float(affine_p)
        self.max_rotation = float(max_rotation)
        self.max_translation = _pair(max_translation, "max_translation")
        self.max_scale = _pair(max_scale, "max_scale")
        if max(self.max_scale) >= 1:
            raise ValueError(f"augmentation max_scale must be below 1 (a relative change), got {max_scale!r}")

    @classmethod
    def from_config(cls, augment: bool | Mapping[str, Any] | None) -> "SliceAugmentation | None":
        """None for ``augment: false``; the reference's transforms for ``true``; else its parameters."""
        from ldm.util import ConfigError

        if augment is None or augment is False:
            return None
        if augment is True:
            return cls()
        if isinstance(augment, Mapping):
            try:
                return cls(**dict(augment))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"augment: {e} (parameters: flip_p, affine_p, max_rotation, max_translation, "
                                  f"max_scale)") from e
        raise ConfigError(f"augment must be true, false or a mapping of SliceAugmentation parameters, "
                          f"got {augment!r}")

    def sample(self, generator: torch.Generator | None = None) -> AugmentParams:
        u = torch.rand(8, generator=generator, dtype=torch.float64).tolist()
        if u[2] >= self.affine_p:
            return AugmentParams(flip_h=u[0] < self.flip_p, flip_w=u[1] < self.flip_p)
        symmetric = lambda v, r: (2 * v - 1) * r  # noqa: E731  uniform in [-r, r]
        return AugmentParams(flip_h=u[0] < self.flip_p, flip_w=u[1] < self.flip_p, affine=True,
                             angle=symmetric(u[3], self.max_rotation),
                             shift_h=symmetric(u[4], self.max_translation[0]),
                             shift_w=symmetric(u[5], self.max_translation[1]),
                             scale_h=1.0 + symmetric(u[6], self.max_scale[0]),
                             scale_w=1.0 + symmetric(u[7], self.max_scale[1]))

    def __call__(self, images: torch.Tensor, masks: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return apply_augmentation(images, masks, self.sample(generator))

    def __repr__(self) -> str:
        return (f"SliceAugmentation(flip_p={self.flip_p}, affine_p={self.affine_p}, max_rotation={self.max_rotation:.4g}, "
                f"max_translation={self.max_translation}, max_scale={self.max_scale})")


def apply_augmentation(images: torch.Tensor, masks: torch.Tensor,
                       params: AugmentParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, then warp (bilinear images, nearest masks, border padding) with one shared grid."""
    dims = [d for d, flip in ((-2, params.flip_h), (-1, params.flip_w)) if flip]
    if dims:
        images, masks = torch.flip(images, dims), torch.flip(masks, dims)
    if not params.affine:
        return images, masks
    size = tuple(images.shape[-2:])
    theta = affine_theta(params, size, images.dtype, images.device)
    grid = F.affine_grid(theta[None], [1, 1, *size], align_corners=False)
    images = F.grid_sample(images[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    masks = F.grid_sample(masks[None].to(images.dtype), grid, mode="nearest", padding_mode="border",
                          align_corners=False)[0]
    return images, masks
