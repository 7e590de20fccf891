"""Zero-mean initial noise: the brightness of a DDIM sample must not follow the mean of x_T.

The failure it removes, reproduced exactly: an eps model that reproduces the per-pixel noise of x_t
but not its spatial mean (what a briefly trained UNet does at the noisiest timesteps) turns the mean
of x_T into a mean error of the sample amplified by 1 / sqrt(abar_t).
"""
import numpy as np
import torch

from ldm.inference.slice_sampler import SliceSampler
from ldm.samplers.ddim import DDIMSampler
from ldm.modules.diffusionmodules.schedules import make_beta_schedule
from ldm.modules.diffusionmodules.util import zero_mean_per_channel


class MeanBlindModel(torch.nn.Module):
    """eps_theta(x_t) = x_t minus its spatial mean; the clean latent it implies has mean 0 only if
    x_t's mean is 0. ``decode_first_stage`` is the identity on the latent."""

    num_timesteps = 1000
    parameterization = "eps"
    channels = 3
    use_ema = False

    def __init__(self) -> None:
        super().__init__()
        betas = make_beta_schedule("linear", 1000, linear_start=0.0015, linear_end=0.0195)
        self.register_buffer("alphas_cumprod", torch.tensor(np.cumprod(1 - betas), dtype=torch.float32))
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def apply_model(self, x, t, cond):
        return x - x.mean(dim=(-2, -1), keepdim=True)

    def get_learned_conditioning(self, c):
        return c

    def decode_first_stage(self, z):
        return z


def test_zero_mean_per_channel_removes_only_the_spatial_mean():
    x = torch.randn(4, 3, 8, 8) + torch.arange(3.0).view(1, 3, 1, 1)
    y = zero_mean_per_channel(x)
    torch.testing.assert_close(y.mean(dim=(-2, -1)), torch.zeros(4, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(y - x, -x.mean(dim=(-2, -1), keepdim=True).expand_as(x))


def test_a_mean_blind_eps_model_amplifies_the_noise_mean_and_zero_mean_noise_removes_it():
    model = MeanBlindModel()
    ctp = torch.zeros(2, 3, 16, 16)  # the "condition" is the latent grid itself here
    offset = torch.tensor([0.05, -0.03]).view(2, 1, 1, 1)
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x_T = x_T - x_T.mean(dim=(-2, -1), keepdim=True) + offset
    gaussian = SliceSampler(model, steps=20, initial_noise="gaussian")(ctp, lambda shape: x_T.clone())
    zero_mean = SliceSampler(model, steps=20, initial_noise="zero_mean")(ctp, lambda shape: x_T.clone())
    # the decoded sample is clamped to [-1, 1]: the mean of x_T drove it far out (about offset / sqrt(abar))
    means = gaussian.mean(dim=(-2, -1))
    assert (means[0] > 0.9).all() and (means[1] < -0.9).all()
    # (float32 rounding of the mean, amplified the same way, stays far below 1)
    torch.testing.assert_close(zero_mean.mean(dim=(-2, -1)), torch.zeros(2, 3), atol=1e-2, rtol=0)


def test_gaussian_initial_noise_is_ddim_on_x_t_as_drawn():
    """With initial_noise="gaussian" the slice sampler is CompVis's DDIM on the x_T it is given."""
    model = MeanBlindModel()
    ctp = torch.zeros(1, 3, 8, 8)
    x_T = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1)) + 0.01
    ours = SliceSampler(model, steps=10, initial_noise="gaussian")(ctp, lambda shape: x_T.clone())
    latents, _ = DDIMSampler(model).sample(S=10, batch_size=1, shape=(3, 8, 8), conditioning=ctp, eta=0.0,
                                           x_T=x_T.clone(), verbose=False)
    torch.testing.assert_close(ours, latents.clamp(-1, 1))
