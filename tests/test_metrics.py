"""Metrics of Table 1 against hand computations, closed forms and torchmetrics' defaults."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import (
    multiscale_structural_similarity_index_measure,
    structural_similarity_index_measure,
)

from ldm.evaluation import metrics
from ldm.evaluation.fid import activation_statistics, fid_from_features, frechet_distance
from ldm.data.transforms.intensity_window import IntensityWindow
from ldm.evaluation.intensity import to_unit_range
from ldm.evaluation.ms_ssim import WANG_BETAS, ms_ssim, scale_set_for


def smooth_images(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, h // 4, w // 4, generator=g)
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def test_mae_known_values():
    x = np.zeros((2, 2, 2))
    x_hat = np.array([[[0.1, 0.2], [0.3, 0.4]], [[0.0, 0.0], [0.0, -1.0]]])
    np.testing.assert_allclose(metrics.mae(x, x_hat), [0.25, 0.25])


def test_lesion_mae_known_values_and_undefined_without_lesion():
    x = np.array([[[1.0, 1.0], [0.0, 0.0]], [[0.5, 0.5], [0.5, 0.5]]])
    x_hat = np.array([[[0.5, 0.9], [1.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    lesion = np.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    num, den = metrics.lesion_abs_error(x, x_hat, lesion)
    np.testing.assert_allclose(num, [0.6, 0.0])
    np.testing.assert_allclose(den, [2, 0])
    values = metrics.lesion_mae(x, x_hat, lesion)
    assert values[0] == pytest.approx(0.3)  # (0.5 + 0.1) / 2, the unmasked errors of 1.0 do not count
    assert math.isnan(values[1])


def test_psnr_closed_form_and_ceiling():
    x = np.zeros((3, 8, 8))
    x_hat = np.stack([np.full((8, 8), 0.1), np.full((8, 8), 0.5), np.zeros((8, 8))])
    values = metrics.psnr(x, x_hat)
    assert values[0] == pytest.approx(-20 * math.log10(0.1))  # 10 log10(1 / 0.01) = 20 dB
    assert values[1] == pytest.approx(10 * math.log10(1 / 0.25))
    assert values[2] == metrics.PSNR_CEILING_DB  # a perfect slice: finite, not inf


def test_brain_masked_mae_and_psnr_ignore_the_background():
    rng = np.random.default_rng(0)
    x, x_hat = rng.uniform(size=(3, 10, 12)), rng.uniform(size=(3, 10, 12))
    full = np.ones_like(x)
    # a full mask is the whole-slice metric (PSNR against torchmetrics)
    np.testing.assert_allclose(metrics.masked_mae(x, x_hat, full), metrics.mae(x, x_hat))
    np.testing.assert_allclose(metrics.masked_psnr(x, x_hat, full), metrics.psnr(x, x_hat), rtol=1e-6)
    # the same brain error with more background: the whole-slice MAE falls, the masked one does not
    brain = np.zeros_like(x)
    brain[:, 2:6, 3:9] = 1
    x_bg, x_hat_bg = x * brain, x_hat * brain
    err = np.abs(x - x_hat)[:, 2:6, 3:9]
    np.testing.assert_allclose(metrics.masked_mae(x_bg, x_hat_bg, brain), err.mean(axis=(1, 2)))
    np.testing.assert_allclose(metrics.mae(x_bg, x_hat_bg), err.sum(axis=(1, 2)) / 120)
    np.testing.assert_allclose(metrics.masked_psnr(x_bg, x_hat_bg, brain),
                               10 * np.log10(1 / (err ** 2).mean(axis=(1, 2))))
    empty = np.zeros_like(x)
    assert np.isnan(metrics.masked_mae(x, x_hat, empty)).all() and np.isnan(metrics.masked_psnr(x, x_hat, empty)).all()
    assert metrics.masked_psnr(x, x, full)[0] == metrics.PSNR_CEILING_DB


def test_mean_intensity_ratio_inside_the_mask():
    x = np.full((2, 4, 4), 0.6)
    x_hat = np.stack([np.full((4, 4), 0.3), np.full((4, 4), 0.6)])
    x_hat[0, 0, 0] = 5.0  # outside the mask: ignored
    mask = np.ones_like(x)
    mask[:, 0, 0] = 0
    np.testing.assert_allclose(metrics.mean_intensity_ratio(x, x_hat, mask), [0.5, 1.0])
    assert np.isnan(metrics.mean_intensity_ratio(np.zeros_like(x), x_hat, mask)).all()


def test_ms_ssim_is_torchmetrics_default_on_paper_size_images():
    preds, target = smooth_images(2, 192, 224, seed=1), smooth_images(2, 192, 224, seed=2)
    preds = 0.7 * preds + 0.3 * target
    s = scale_set_for(192, 224)
    assert s.betas == WANG_BETAS and s.kernel_size == 11
    ours = ms_ssim(preds, target)
    reference = multiscale_structural_similarity_index_measure(preds, target, data_range=1.0, reduction="none")
    torch.testing.assert_close(ours, reference)
    assert ours.shape == (2,) and bool((ours < 1).all())


def _manual_ms_ssim(preds, target, betas, kernel, sigma):
    """MS-SSIM from single-scale SSIM pieces: prod_j cs_j^beta_j for j < M, times ssim_M^beta_M."""
    value = torch.ones(preds.shape[0], dtype=torch.float64)
    for j, beta in enumerate(betas):
        sim, cs = structural_similarity_index_measure(
            preds, target, kernel_size=kernel, sigma=sigma, data_range=1.0, reduction="none", return_contrast_sensitivity=True)
        term = sim if j == len(betas) - 1 else cs
        value = value * torch.relu(term).double() ** beta
        preds, target = F.avg_pool2d(preds, 2), F.avg_pool2d(target, 2)
    return value


@pytest.mark.parametrize("size,n_scales", [(64, 3), (40, 2), (112, 4), (16, 1)])
def test_ms_ssim_small_images_use_fewer_renormalised_scales(size, n_scales):
    preds, target = smooth_images(3, size, size + 8, seed=3), smooth_images(3, size, size + 8, seed=4)
    preds = 0.5 * preds + 0.5 * target
    s = scale_set_for(size, size + 8)
    assert s.n_scales == n_scales
    assert sum(s.betas) == pytest.approx(1.0)
    expected_betas = np.asarray(WANG_BETAS[:n_scales]) / sum(WANG_BETAS[:n_scales])
    np.testing.assert_allclose(s.betas, expected_betas)
    ours = ms_ssim(preds, target).double()
    torch.testing.assert_close(ours, _manual_ms_ssim(preds, target, s.betas, s.kernel_size, s.sigma), rtol=1e-4, atol=1e-5)
    assert bool((ours > 0).all()) and bool((ours < 1).all())
    torch.testing.assert_close(ms_ssim(target, target), torch.ones(3), rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [3, 8, 10, 11, 21, 22, 43, 44, 87, 88, 98, 99, 175, 176])
def test_ms_ssim_scale_set_is_accepted_at_every_boundary(size):
    x = smooth_images(1, max(size, 4), max(size, 4))[..., :size, :size]
    value = ms_ssim(x * 0.9, x)
    assert torch.isfinite(value).all() and 0 < value.item() < 1
    s = scale_set_for(size, size)
    assert 2 * int(3.5 * s.sigma + 0.5) + 1 == s.kernel_size <= size  # torchmetrics' Gaussian window
    if size >= 11:
        assert s.kernel_size == 11 and s.sigma == 1.5


def test_unit_range_uses_ground_truth_percentiles_inside_mask():
    rng = np.random.default_rng(0)
    volume = rng.normal(500, 200, size=(10, 12, 3))
    mask = np.zeros(volume.shape, bool)
    mask[2:8, 3:9] = True
    volume[~mask] = 1e6  # outside the mask: must not move the window
    lo, hi = IntensityWindow(name="reference_percentile").intensity_range("dwi", volume, mask)
    inside = np.clip(volume[mask], 0, None)
    assert (lo, hi) == pytest.approx((np.quantile(inside, 0.005), np.quantile(inside, 0.995)))
    out = to_unit_range(volume, (lo, hi), mask)
    assert out.min() == 0 and out.max() == 1 and (out[~mask] == 0).all()
    v = volume[mask][0]
    assert out[mask][0] == pytest.approx(np.clip((v - lo) / (hi - lo), 0, 1), abs=1e-6)


def test_frechet_distance_matches_closed_forms():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
    s1, s2 = rng.uniform(0.5, 2, size=4), rng.uniform(0.5, 2, size=4)
    diagonal = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(diagonal, rel=1e-8)
    a = rng.normal(size=(4, 4))
    sigma = a @ a.T + 0.1 * np.eye(4)  # a full covariance; sigma2 = c^2 sigma commutes with it
    c = 1.7
    scaled = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(sigma)
    assert frechet_distance(mu1, sigma, mu2, c ** 2 * sigma) == pytest.approx(scaled, rel=1e-8)
    assert frechet_distance(mu1, sigma, mu1, sigma) == pytest.approx(0.0, abs=1e-8)


def test_fid_from_features_of_gaussian_samples():
    rng = np.random.default_rng(1)
    real = rng.normal(0.0, 1.0, size=(4000, 3))
    fake = rng.normal(1.0, 2.0, size=(4000, 3))
    mu, cov = activation_statistics(fake)
    np.testing.assert_allclose(cov, np.cov(fake.T))
    # closed form of the populations: 3 * 1^2 + 3 * (1 + 4 - 2 * 2) = 6; sampling error is small
    assert fid_from_features(real, fake) == pytest.approx(6.0, rel=0.1)
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(real[:1], fake)
