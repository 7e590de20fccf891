"""Fréchet Inception Distance (Heusel et al., 2017) with a local TorchScript Inception-v3.

torchmetrics' FID needs torch-fidelity, and torchvision is broken on these machines, so the feature
extractor is a TorchScript file loaded from disk: the Inception-v3 of the TF FID reference
(``inception-2015-12-05.pt``, distributed by NVlabs for StyleGAN2-ADA and used by clean-fid) is
called as ``module(images, return_features=True)`` on (N, 3, 299, 299) images in [0, 255] and
returns (N, 2048) pool features. Any TorchScript module with that call (or a plain ``module(x)``
returning (N, D) features) works. Nothing is downloaded: without a file FID is skipped, and the
reason is written in the results.

Slices in [0, 1] are repeated to 3 channels, scaled to [0, 255] and resized to 299 x 299
bilinearly. FID is computed over all evaluated slices of a run (per modality), never per patient:
a patient has too few slices for a 2048-dimensional covariance.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.linalg
import torch
import torch.nn.functional as F

INCEPTION_SIZE = 299


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Fréchet distance of two Gaussians.

    As in the reference FID code, a singular product (fewer samples than feature dimensions) is
    regularised by adding ``eps`` to both diagonals, and a tiny imaginary part from ``sqrtm``'s
    numerical error is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"Fréchet distance: means {mu1.shape}/{mu2.shape} and covariances "
                         f"{sigma1.shape}/{sigma2.shape} do not match")
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: sqrtm has a large imaginary part "
                             f"({np.max(np.abs(covmean.imag)):.3g})")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def activation_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of (N, D) features."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors, got an array of shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """FID between two sets of (N, D) features."""
    return frechet_distance(*activation_statistics(real), *activation_statistics(fake))


class InceptionFeatures:
    """A TorchScript feature extractor read from a local file, applied to grey slices in [0, 1]."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights {str(path)!r} do not exist")
        try:
            self.module = torch.jit.load(str(path), map_location=device).eval()
        except (RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"Inception weights {str(path)!r} are not a TorchScript module: {first}") from e
        self.path, self.device, self.batch_size = path, torch.device(device), batch_size
        self._keyword: bool | None = None  # whether the module takes return_features=True

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._keyword is not False:
            try:
                out = self.module(x, return_features=True)
                self._keyword = True
                return out
            except RuntimeError:
                if self._keyword:  # it worked before: this is a real error
                    raise
                self._keyword = False
        return self.module(x)

    @torch.inference_mode()
    def __call__(self, slices: np.ndarray) -> np.ndarray:
        """(S, H, W) slices in [0, 1] -> (S, D) float64 features."""
        out = []
        for start in range(0, len(slices), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(slices[start:start + self.batch_size], dtype=np.float32))
            x = x.to(self.device)[:, None].repeat(1, 3, 1, 1).clamp(0, 1) * 255.0
            x = F.interpolate(x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
            x.clamp_(0.0, 255.0)  # interpolating 255s can round to 255.00002: keep the network's input range
            features = self._forward(x)
            out.append(features.reshape(features.shape[0], -1).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))
