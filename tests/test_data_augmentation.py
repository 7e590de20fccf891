"""Joint slice augmentation: exact identity, exact flips, rigid rotation on non-square slices,
binary masks that stay aligned with the images."""
import math

import pytest
import torch

from ldm.data.training.augmentation import AugmentParams, SliceAugmentation, apply_augmentation


def _blob(h, w, row, col, sigma=1.5):
    rows = torch.arange(h, dtype=torch.float32)[:, None]
    cols = torch.arange(w, dtype=torch.float32)[None, :]
    return torch.exp(-((rows - row) ** 2 + (cols - col) ** 2) / (2 * sigma ** 2))


def _centroid(image):
    rows = torch.arange(image.shape[0], dtype=torch.float64)[:, None]
    cols = torch.arange(image.shape[1], dtype=torch.float64)[None, :]
    total = image.double().sum()
    return float((image * rows).sum() / total), float((image * cols).sum() / total)


def test_identity_and_flips_are_exact():
    images = torch.rand(3, 12, 20)
    masks = (torch.rand(2, 12, 20) > 0.5).float()
    out_images, out_masks = apply_augmentation(images, masks, AugmentParams(affine=True))
    torch.testing.assert_close(out_images, images, atol=1e-6, rtol=0)
    assert torch.equal(out_masks, masks)
    out_images, out_masks = apply_augmentation(images, masks, AugmentParams(flip_h=True, flip_w=True))
    assert torch.equal(out_images, images.flip(-2, -1)) and torch.equal(out_masks, masks.flip(-2, -1))


@pytest.mark.parametrize("angle", [math.pi / 16, -math.pi / 7])
def test_rotation_and_shift_are_rigid_in_pixels_on_a_non_square_slice(angle):
    h, w = 40, 64
    centre_r, centre_c = (h - 1) / 2, (w - 1) / 2
    offset_r, offset_c = 9.0, -14.0  # a blob 9 rows down and 14 columns left of the centre
    shift_r, shift_c = 4.0, -3.0  # pixels
    image = _blob(h, w, centre_r + offset_r, centre_c + offset_c)[None]
    params = AugmentParams(affine=True, angle=angle, shift_h=shift_r, shift_w=shift_c)
    out, _ = apply_augmentation(image, torch.zeros(1, h, w), params)
    # MONAI's order: output p samples the input at R (p + t) (row, column; R as create_rotate), so the
    # blob at input offset o lands at R^-1 o - t
    cos, sin = math.cos(angle), math.sin(angle)
    expected_r = cos * offset_r + sin * offset_c - shift_r
    expected_c = -sin * offset_r + cos * offset_c - shift_c
    row, col = _centroid(out[0])
    assert row == pytest.approx(centre_r + expected_r, abs=0.15)
    assert col == pytest.approx(centre_c + expected_c, abs=0.15)


def test_scale_stretches_about_the_centre():
    h, w = 48, 48
    centre = (h - 1) / 2
    image = _blob(h, w, centre + 10.0, centre, sigma=1.0)[None]
    out, _ = apply_augmentation(image, torch.zeros(1, h, w), AugmentParams(affine=True, scale_h=0.5))
    row, col = _centroid(out[0])
    assert row == pytest.approx(centre + 20.0, abs=0.2) and col == pytest.approx(centre, abs=0.05)


def test_masks_stay_binary_and_aligned_with_images():
    torch.manual_seed(1)
    augmentation = SliceAugmentation()
    h, w = 48, 40
    mask = (_blob(h, w, 20, 17, sigma=9.0) > 0.3).float()
    lesion = (_blob(h, w, 25, 21, sigma=3.0) > 0.5).float()
    images = torch.stack([mask, lesion, torch.rand(h, w)])  # images that *are* the masks, warped bilinearly
    generator = torch.Generator().manual_seed(0)
    warped_any = 0
    for _ in range(20):
        params = augmentation.sample(generator)
        warped_any += params.affine
        out_images, out_masks = apply_augmentation(images, torch.stack([mask, lesion]), params)
        assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
        for channel in range(2):
            disagreement = ((out_images[channel] > 0.5).float() != out_masks[channel]).float().mean()
            assert disagreement < 0.02
    assert warped_any >= 10  # p = 0.9


def test_sampled_parameters_follow_the_reference_ranges():
    """The reference's RandFlipd (p 0.5 per axis) and RandAffined (p 0.9, rotation pi/16,
    translation 32 px, scale 0.001) at 192 x 224."""
    augmentation = SliceAugmentation()
    generator = torch.Generator().manual_seed(0)
    draws = [augmentation.sample(generator) for _ in range(4000)]
    affine = [d for d in draws if d.affine]
    assert all(abs(d.angle) <= math.pi / 16 and abs(d.shift_h) <= 32 and abs(d.shift_w) <= 32 for d in affine)
    assert all(abs(d.scale_h - 1) <= 0.001 and abs(d.scale_w - 1) <= 0.001 for d in affine)
    assert len(affine) / 4000 == pytest.approx(0.9, abs=0.02)
    assert sum(d.flip_h for d in draws) / 4000 == pytest.approx(0.5, abs=0.03)
    assert sum(d.flip_w for d in draws) / 4000 == pytest.approx(0.5, abs=0.03)
    # the ranges are used in full (uniform draws reach near their bounds) ...
    assert max(abs(d.angle) for d in affine) > 0.98 * math.pi / 16
    assert max(abs(d.shift_h) for d in affine) > 31 and max(abs(d.shift_w) for d in affine) > 31
    assert max(abs(d.scale_w - 1) for d in affine) > 0.00098
    # ... and are uniform: a quarter of the shifts beyond half the range on each side
    assert sum(d.shift_w > 16 for d in affine) / len(affine) == pytest.approx(0.25, abs=0.03)
    assert all(d.angle == 0 and d.shift_h == 0 and d.scale_h == 1 for d in draws if not d.affine)


def test_augmentation_from_config():
    assert SliceAugmentation.from_config(False) is None and SliceAugmentation.from_config(None) is None
    reference = SliceAugmentation.from_config(True)
    assert reference.max_translation == (32.0, 32.0) and reference.max_rotation == pytest.approx(math.pi / 16)
    demo = SliceAugmentation.from_config({"max_translation": 10.667, "max_scale": [0.001, 0.002]})
    assert demo.max_translation == (10.667, 10.667) and demo.max_scale == (0.001, 0.002)
    from ldm.util import ConfigError
    with pytest.raises(ConfigError, match="max_shift"):
        SliceAugmentation.from_config({"max_shift": 3})
    with pytest.raises(ConfigError, match="probability"):
        SliceAugmentation.from_config({"affine_p": 1.5})
