"""v-prediction (Salimans & Ho, 2022): the target, x0_hat from v, the loss, and the samplers.

The samplers are checked by an identity: a v-model whose output is the v implied by an eps-model
(v = sqrt(a) eps - sqrt(1 - a) x0_hat(eps)) must draw the eps-model's samples, step by step and
over a whole chain, for DDIM (any eta) and DPM-Solver++.
"""
import numpy as np
import pytest
import torch

from ldm.samplers.ddim import DDIMSampler
from ldm.samplers.dpm_solver import DPMSolverPlusPlusSampler
from tests.test_ddpm import make_ddpm, numpy_schedule

T = 1000


class EpsModel(torch.nn.Module):
    """eps(x, t, c) = tanh(0.7 x + c) (0.5 + t / T) + 0.2 x on the paper's linear schedule."""

    num_timesteps = T
    parameterization = "eps"

    def __init__(self) -> None:
        super().__init__()
        betas = np.linspace(0.0015 ** 0.5, 0.0195 ** 0.5, T) ** 2
        self.register_buffer("alphas_cumprod", torch.tensor(np.cumprod(1 - betas), dtype=torch.float64))

    def eps(self, x, t, cond):
        return torch.tanh(0.7 * x + cond) * (0.5 + t.to(x.dtype).view(-1, 1, 1, 1) / T) + 0.2 * x

    def apply_model(self, x, t, cond):
        return self.eps(x, t, cond)


class VTwin(EpsModel):
    """The same denoiser written as v: v = sqrt(a) eps - sqrt(1 - a) x0_hat, x0_hat by Eq. 5."""

    parameterization = "v"

    def apply_model(self, x, t, cond):
        a = self.alphas_cumprod.to(x.dtype)[t].view(-1, 1, 1, 1)
        eps = self.eps(x, t, cond)
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0


def test_v_target_and_x0_from_v_invert_the_forward_process():
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 by hand; sqrt(abar) x_t - sqrt(1 - abar) v gives x0 back."""
    model = make_ddpm(parameterization="v").double()
    _, abar, _ = numpy_schedule()
    x0, noise = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.randn(3, 3, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 17, 49])
    a = torch.tensor(abar[t.numpy()]).view(-1, 1, 1, 1)
    v = model.get_v(x0, noise, t)
    torch.testing.assert_close(v, a.sqrt() * noise - (1 - a).sqrt() * x0, rtol=1e-6, atol=1e-6)
    x_t = model.q_sample(x0, t, noise)
    torch.testing.assert_close(model.predict_start(x_t, t, v), x0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("loss_type", ["l2", "l1"])
def test_v_loss_by_hand(loss_type):
    model = make_ddpm(parameterization="v", loss_type=loss_type, original_elbo_weight=0.5)
    out, x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([1, 7, 30])
    betas, abar, abar_prev = numpy_schedule()
    a = torch.tensor(abar[t.numpy()], dtype=torch.float32).view(-1, 1, 1, 1)
    target = a.sqrt() * noise - (1 - a).sqrt() * x0
    err = (out - target).abs() if loss_type == "l1" else (out - target) ** 2
    per_sample = err.mean(dim=(1, 2, 3))
    model.train()
    loss, loss_dict = model.latent_loss(out, x0, noise, t)
    torch.testing.assert_close(loss_dict["train/loss_simple"], per_sample.mean(), rtol=1e-5, atol=1e-6)
    # ELBO weight: an error e in v is sqrt(1 - abar) e in x0_hat, whose posterior-mean coefficient is coef1
    var = betas * (1 - abar_prev) / (1 - abar)
    coef1 = betas * np.sqrt(abar_prev) / (1 - abar)
    w = coef1[t.numpy()] ** 2 * (1 - abar[t.numpy()]) / (2 * var[t.numpy()])
    vlb = (torch.tensor(w, dtype=torch.float32) * per_sample).mean()
    torch.testing.assert_close(loss_dict["train/loss_vlb"], vlb, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(loss, per_sample.mean() + 0.5 * vlb, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_samples_a_v_model_as_its_eps_twin(eta):
    # DDIM runs its chain in float32
    shape, cond = (2, 3, 3), torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(2, *shape, generator=torch.Generator().manual_seed(2))
    step_noise = torch.randn(10, 2, *shape, generator=torch.Generator().manual_seed(3))
    out = {}
    for model in (EpsModel().float(), VTwin().float()):
        latents, inter = DDIMSampler(model).sample(10, 2, shape, cond, eta=eta, x_T=x_T, verbose=False,
                                                   step_noise=step_noise if eta > 0 else None)
        out[model.parameterization] = (latents, inter["pred_x0"])
    torch.testing.assert_close(out["v"][0], out["eps"][0], rtol=1e-3, atol=1e-3)
    for a, b in zip(out["v"][1], out["eps"][1]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(out["eps"][0], x_T)  # the chain moved


def test_dpm_solver_samples_a_v_model_as_its_eps_twin():
    shape, cond = (2, 3, 3), torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x_T = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    eps_latents, _ = DPMSolverPlusPlusSampler(EpsModel()).sample(20, 2, shape, cond, x_T=x_T, verbose=False)
    v_latents, _ = DPMSolverPlusPlusSampler(VTwin()).sample(20, 2, shape, cond, x_T=x_T, verbose=False)
    torch.testing.assert_close(v_latents, eps_latents, rtol=1e-4, atol=1e-4)


def test_an_unknown_parameterization_is_refused_by_name():
    with pytest.raises(Exception, match="'w'.*'eps', 'x0', 'v'"):
        make_ddpm(parameterization="w")
