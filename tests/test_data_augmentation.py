"""Joint slice augmentation: exact identity, exact flips, rigid rotation on non-square slices,
binary masks that stay aligned with the images."""
import math

import pytest
import torch

from ldm.data.augmentation import AugmentParams, SliceAugmentation, affine_theta, apply_augmentation


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
def test_rotation_is_rigid_in_pixels_on_a_non_square_slice(angle):
    h, w = 40, 64
    centre_r, centre_c = (h - 1) / 2, (w - 1) / 2
    offset_r, offset_c = 9.0, -14.0  # a blob 9 rows down and 14 columns left of the centre
    image = _blob(h, w, centre_r + offset_r, centre_c + offset_c)[None]
    params = AugmentParams(affine=True, angle=angle, shift_h=0.1, shift_w=-0.05)
    out, _ = apply_augmentation(image, torch.zeros(1, h, w), params)
    # output p samples input R p + t (pixels, x = column, y = row): the blob lands at R^-1 (q - t)
    x, y = offset_c - (-0.05 * w), offset_r - 0.1 * h
    cos, sin = math.cos(angle), math.sin(angle)
    expected_c, expected_r = cos * x + sin * y, -sin * x + cos * y
    row, col = _centroid(out[0])
    assert row == pytest.approx(centre_r + expected_r, abs=0.15)
    assert col == pytest.approx(centre_c + expected_c, abs=0.15)
    # and the distance to the centre is unchanged by the rotation (no stretching for H != W)
    theta = affine_theta(angle, 0.0, 0.0, (h, w))
    assert theta[0, 1] == pytest.approx(-sin * h / w) and theta[1, 0] == pytest.approx(sin * w / h)


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
    augmentation = SliceAugmentation()
    generator = torch.Generator().manual_seed(0)
    draws = [augmentation.sample(generator) for _ in range(2000)]
    assert all(abs(d.angle) <= math.pi / 16 and abs(d.shift_h) <= 1 / 7 and abs(d.shift_w) <= 1 / 7 for d in draws)
    assert sum(d.affine for d in draws) / 2000 == pytest.approx(0.9, abs=0.03)
    assert sum(d.flip_h for d in draws) / 2000 == pytest.approx(0.5, abs=0.04)
    assert sum(d.flip_w for d in draws) / 2000 == pytest.approx(0.5, abs=0.04)
    assert max(abs(d.angle) for d in draws) > 0.9 * math.pi / 16
    assert all(d.angle == 0 and d.shift_h == 0 for d in draws if not d.affine)
