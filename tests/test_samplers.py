"""The sampler package: one protocol, chosen by name or config, refused for the wrong model family,
and the model's configured sampler used for its logs, sample_log and the validation lesion MAE."""
import numpy as np
import pytest
import torch

from ldm.inference.slice_sampler import make_slice_sampler
from ldm.samplers import SAMPLERS, make_sampler, sampler_class
from ldm.samplers.bridge import BridgeSampler
from ldm.samplers.ddim import DDIMSampler
from ldm.samplers.dpm_solver import DPMSolverPlusPlusSampler
from ldm.util import ConfigError
from tests.helpers.bridge_models import tiny_bridge
from tests.helpers.lapt_models import IMAGE, build, lapt_config, make_batch, stage2_config


def with_a_nonzero_output(model):
    """CompVis zero-initialises the UNet's last convolution: eps = 0 would make every sampler agree."""
    g = torch.Generator().manual_seed(3)
    for p in model.model.diffusion_model.out.parameters():
        p.data.copy_(0.05 * torch.randn(p.shape, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def ldm_model():
    torch.manual_seed(0)
    return with_a_nonzero_output(build(stage2_config(use_ema=False)))


def test_every_registered_sampler_offers_the_protocol():
    for name, target in SAMPLERS.items():
        cls, params = sampler_class(name)
        assert cls.name == name and params == {} and target.endswith(cls.__name__)
        for attribute in ("unsupported", "check", "timesteps", "sample", "starts_from_noise"):
            assert hasattr(cls, attribute), (name, attribute)
    assert sampler_class({"target": "ldm.samplers.dpm_solver.DPMSolverPlusPlusSampler",
                          "params": {"lower_order_final": False}}) == (DPMSolverPlusPlusSampler,
                                                                       {"lower_order_final": False})
    from ldm.models.diffusion.ddim import DDIMSampler as compvis_path
    assert compvis_path is DDIMSampler


def test_a_sampler_for_the_wrong_model_family_is_refused_with_the_reason(ldm_model):
    bridge = tiny_bridge()
    with pytest.raises(ConfigError, match="'ddim' cannot sample.*alphas_cumprod"):
        make_sampler("ddim", bridge)
    with pytest.raises(ConfigError, match="'bridge' cannot sample.*m_t"):
        make_sampler("bridge", ldm_model)
    with pytest.raises(ConfigError, match="'euler' is not one of ddim, dpmsolver\\+\\+, bridge"):
        make_sampler("euler", ldm_model)
    with pytest.raises(ConfigError, match="'bridge' cannot sample"):  # in the config: at construction
        build({**stage2_config(), "params": {**stage2_config()["params"], "sampler": "bridge"}})
    assert isinstance(bridge.latent_sampler(), BridgeSampler) and bridge.sampler_name == "bridge"


def test_timesteps_are_exposed_and_are_what_the_sampler_evaluates(ldm_model):
    cond = ldm_model.get_learned_conditioning(make_batch(b=2, lesion_slices=(0,))["ctp"])
    for name in ("ddim", "dpmsolver++"):
        sampler = make_sampler(name, ldm_model)
        seen = []
        original = ldm_model.apply_model

        def spy(x, t, c):
            seen.append(int(t[0]))
            return original(x, t, c)

        ldm_model.apply_model = spy
        try:
            sampler.sample(7, 2, (3, 8, 8), cond, x_T=torch.zeros(2, 3, 8, 8), verbose=False)
        finally:
            del ldm_model.apply_model
        np.testing.assert_array_equal(seen, sampler.timesteps(7))
        assert (np.diff(seen) < 0).all()


def test_the_configured_sampler_runs_sample_log_and_the_validation_lesion_mae():
    torch.manual_seed(0)
    model = with_a_nonzero_output(build(lapt_config(sampler="dpmsolver++", lesion_mae_ddim_steps=4)))
    assert model.sampler_name == "dpmsolver++"
    cond = model.get_learned_conditioning(make_batch(b=2, lesion_slices=(0,))["ctp"])
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    via_model = model.sample_log(cond, 2, ddim_steps=4, x_T=x_T, return_intermediates=False)
    direct, _ = DPMSolverPlusPlusSampler(model).sample(4, 2, (3, 8, 8), cond, x_T=x_T, verbose=False)
    torch.testing.assert_close(via_model, direct)
    ddim, _ = DDIMSampler(model).sample(4, 2, (3, 8, 8), cond, x_T=x_T, verbose=False)
    assert not torch.allclose(via_model, ddim)
    x_T_val = model.lesion_mae_noise((3, 8, 8), 0, 2)
    lesion = model.lesion_mae_latents(cond, 0)
    torch.testing.assert_close(lesion, DPMSolverPlusPlusSampler(model).sample(4, 2, (3, 8, 8), cond, x_T=x_T_val,
                                                                              verbose=False)[0])
    # ancestral sampling stays DDIM over all T with eta 1, whatever is configured
    assert model.sample(cond, x_T=x_T, verbose=False).shape == (2, 3, 8, 8)


def test_the_slice_sampler_is_the_latent_sampler_then_the_decoder(ldm_model):
    ctp = make_batch(b=3)["ctp"]
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    for name, cls in (("ddim", DDIMSampler), ("dpmsolver++", DPMSolverPlusPlusSampler)):
        slices = make_slice_sampler(ldm_model, steps=5, eta=0.0, initial_noise="gaussian", sampler=name)
        assert slices.name == name and slices.n_evaluations == 5
        images = slices(ctp, lambda shape: noise.clone())
        cond = ldm_model.get_learned_conditioning(ctp)
        latents, _ = cls(ldm_model).sample(5, 3, (3, 8, 8), cond, x_T=noise.clone(), verbose=False)
        torch.testing.assert_close(images, ldm_model.decode_first_stage(latents).clamp(-1, 1))
        assert images.shape == (3, 2, IMAGE, IMAGE)


def test_ddim_eta_noise_given_per_slice_makes_slices_independent_of_the_batch(ldm_model):
    ctp = make_batch(b=3)["ctp"]

    def noise_for(indices):
        return lambda shape: torch.stack([torch.randn(tuple(shape), generator=torch.Generator().manual_seed(50 + i))
                                          for i in indices])

    slices = make_slice_sampler(ldm_model, steps=4, eta=1.0, sampler="ddim")
    together = slices(ctp, noise_for([0, 1, 2]))
    alone = slices(ctp[1:2], noise_for([1]))
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-4)
    deterministic = make_slice_sampler(ldm_model, steps=4, eta=0.0, sampler="ddim")(ctp, noise_for([0, 1, 2]))
    assert not torch.allclose(together, deterministic)
    with pytest.raises(ValueError, match="step_noise has shape"):
        DDIMSampler(ldm_model).sample(4, 1, (3, 8, 8), ldm_model.get_learned_conditioning(ctp[:1]), eta=1.0,
                                      step_noise=torch.zeros(3, 1, 3, 8, 8), verbose=False)
