"""LatentDiffusion (cLDM): hooks, frozen first stage, conditioning, scale_by_std, EMA, training, logging.

A tiny stand-in first stage (f = 4, straight-through rounding as its "quantiser") keeps these tests
fast; ``test_stage1_checkpoint_loads_into_the_frozen_first_stage`` uses the real VQModelInterface.
"""
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from ldm.compilation import compile_unavailable
from ldm.models.diffusion import gaussian_diffusion
from ldm.samplers.ddim import DDIMSampler
from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.util import ConfigError


class TinyFirstStage(nn.Module):
    """encode(x) -> pre-quantisation latent h; decode(h, force_not_quantize=False) rounds h to a
    0.5 grid with a straight-through gradient, then decodes (the VQModelInterface contract)."""

    def __init__(self, in_channels: int = 2, embed_dim: int = 3) -> None:
        super().__init__()
        self.enc = nn.Conv2d(in_channels, embed_dim, 4, stride=4)
        self.dec = nn.ConvTranspose2d(embed_dim, in_channels, 4, stride=4)
        self.dropout = nn.Dropout(0.5)  # must stay off: the first stage is frozen in eval mode

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(self.dropout(x))

    def decode(self, h: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        if not force_not_quantize:
            h = h + ((h * 2).round() / 2 - h).detach()
        return torch.tanh(self.dec(h))


class HalvingSchedule:
    """A CompVis-style scheduler object: ``schedule(step)`` is the LambdaLR factor."""

    def schedule(self, step: int) -> float:
        return 0.5 ** step


UNET = {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
        "params": dict(image_size=4, in_channels=18, out_channels=3, model_channels=32, num_res_blocks=1,
                       attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=8)}
RESCALER = {"target": "ldm.modules.encoders.modules.SpatialRescaler",
            "params": dict(n_stages=2, in_channels=15, out_channels=15, bias=False)}
FIRST_STAGE = {"target": "tests.test_latent_diffusion.TinyFirstStage"}


def make_model(**overrides) -> LatentDiffusion:
    params = dict(first_stage_config=FIRST_STAGE, cond_stage_config=RESCALER, unet_config=UNET, timesteps=100,
                  linear_start=0.0015, linear_end=0.0195, cond_stage_trainable=True, image_size=4,
                  monitor="val/loss_simple_ema", log_ddim_steps=3)
    params.update(overrides)
    model = LatentDiffusion(**params)
    model.learning_rate = 1e-3
    return model


def make_batch(n: int = 2, size: int = 16, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"mri": torch.rand(n, 2, size, size, generator=g) * 2 - 1,
            "ctp": torch.rand(n, 15, size, size, generator=g) * 2 - 1,
            "mask": torch.ones(n, 1, size, size), "lesion": torch.zeros(n, 1, size, size),
            "patient_id": [f"p{i}" for i in range(n)], "slice_index": torch.arange(n)}


def test_state_dict_keys_and_the_frozen_first_stage():
    model = make_model(scale_by_std=True)
    keys = set(model.state_dict())
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.out.2.weight",
                "model_ema.diffusion_modelinput_blocks00weight", "model_ema.decay", "model_ema.num_updates",
                "first_stage_model.enc.weight", "cond_stage_model.channel_mapper.weight", "scale_factor",
                "betas", "alphas_cumprod"):
        assert key in keys, key
    assert not any(k.startswith("model_ema.") and "first_stage" in k for k in keys)
    assert "scale_factor" not in make_model().state_dict()  # a plain attribute without scale_by_std (CompVis)
    model.train()
    assert not model.first_stage_model.training and model.model.training and model.cond_stage_model.training
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())
    assert all(p.requires_grad for p in model.cond_stage_model.parameters())
    frozen_cond = make_model(cond_stage_trainable=False)
    frozen_cond.train()
    assert not frozen_cond.cond_stage_model.training
    assert not any(p.requires_grad for p in frozen_cond.cond_stage_model.parameters())


def test_get_input_encodes_without_a_graph_and_scales():
    model = make_model(scale_by_std=True)
    model.scale_factor.fill_(0.5)
    batch = make_batch()
    z, c, x, xrec, xc = model.get_input(batch, "mri", return_first_stage_outputs=True, return_original_cond=True)
    with torch.no_grad():
        expected = 0.5 * model.first_stage_model.enc(batch["mri"])
    torch.testing.assert_close(z, expected)
    assert not z.requires_grad and z.shape == (2, 3, 4, 4)
    assert torch.equal(c, batch["ctp"]) and torch.equal(xc, batch["ctp"])  # trainable rescaler: forward encodes
    assert torch.equal(x, batch["mri"]) and xrec.shape == x.shape
    _, c_enc = model.get_input(batch, "mri", force_c_encode=True)
    assert c_enc.shape == (2, 15, 4, 4)
    with pytest.raises(ValueError, match="no key 'ctp'"):
        model.get_input({"mri": batch["mri"]}, "mri")


def test_condition_that_does_not_fit_names_both_shapes():
    model = make_model()
    z = torch.randn(2, 3, 4, 4)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"condition \(2,15,8,8\) does not fit latent \(2,3,4,4\)"):
        model.apply_model(z, t, model.get_learned_conditioning(torch.randn(2, 15, 32, 32)))
    with pytest.raises(ValueError, match=r"condition \(2,14,4,4\) does not fit latent \(2,3,4,4\).*15 channels"):
        model.apply_model(z, t, torch.randn(2, 14, 4, 4))
    with pytest.raises(ValueError, match="does not fit"):
        model.shared_step({**make_batch(), "ctp": torch.randn(2, 15, 32, 32)})


def test_p_losses_is_q_sample_apply_model_latent_loss():
    model = make_model()
    with torch.no_grad():  # a non-zero output layer, so the prediction matters
        model.model.diffusion_model.out[2].weight.normal_(0, 0.1)
    z, cond = torch.randn(2, 3, 4, 4), torch.randn(2, 15, 4, 4)
    t, noise = torch.tensor([5, 90]), torch.randn(2, 3, 4, 4)
    loss, loss_dict = model.p_losses(z, cond, t, noise=noise, mask="ignored", lesion=None)
    x_noisy = model.q_sample(z, t, noise)
    out = model.apply_model(x_noisy, t, cond)
    torch.testing.assert_close(loss, ((out - noise) ** 2).mean())
    assert set(loss_dict) == {"train/loss_simple", "train/loss_vlb", "train/loss"}
    # Eq. 5 from the same prediction
    torch.testing.assert_close(model.predict_start(x_noisy, t, out),
                               (x_noisy - model.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1) * out)
                               / model.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1))


def test_subclass_hooks_receive_the_batch_entries():
    seen = {}

    class WithMask(LatentDiffusion):
        def get_loss_kwargs(self, batch):
            return {"mask": batch["mask"], "x": batch["mri"]}

        def p_losses(self, x_start, cond, t, noise=None, mask=None, lesion=None, x=None):
            seen.update(x_start=x_start, cond=cond, t=t, mask=mask, x=x)
            return super().p_losses(x_start, cond, t, noise=noise)

    params = dict(first_stage_config=FIRST_STAGE, cond_stage_config=RESCALER, unet_config=UNET, timesteps=100,
                  cond_stage_trainable=True)
    model = WithMask(**params)
    batch = make_batch()
    model.shared_step(batch)
    assert torch.equal(seen["mask"], batch["mask"]) and torch.equal(seen["x"], batch["mri"])
    assert seen["cond"].shape == (2, 15, 4, 4) and seen["cond"].requires_grad  # the rescaler ran, with grad
    assert seen["t"].shape == (2,) and 0 <= int(seen["t"].min()) and int(seen["t"].max()) < 100


def test_differentiable_decode_reaches_z_but_not_the_first_stage():
    model = make_model()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    x_hat = model.differentiable_decode_first_stage(z)
    x_hat.square().sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.first_stage_model.parameters())
    assert not model.decode_first_stage(z).requires_grad
    # quantised by default, skipped on request
    assert not torch.equal(model.decode_first_stage(z), model.decode_first_stage(z, force_not_quantize=True))


def test_a_few_steps_on_one_batch_lower_the_loss():
    torch.manual_seed(0)
    model = make_model()
    opt = model.configure_optimizers()
    batch = make_batch(4)
    z, c = model.get_input(batch, "mri")
    t, noise = torch.randint(0, 100, (4,)), torch.randn_like(z)
    first_stage = {k: v.clone() for k, v in model.first_stage_model.state_dict().items()}
    rescaler = model.cond_stage_model.channel_mapper.weight.detach().clone()
    losses = []
    for _ in range(12):
        loss, _ = model(z, c, t=t, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
    assert not torch.equal(model.cond_stage_model.channel_mapper.weight, rescaler)  # the rescaler trains
    for k, v in model.first_stage_model.state_dict().items():
        assert torch.equal(v, first_stage[k]), k


def test_configure_optimizers():
    model = make_model(learn_logvar=True)
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == 1e-3
    trained = {id(p) for group in opt.param_groups for p in group["params"]}
    expected = [*model.model.parameters(), *model.cond_stage_model.parameters(), model.logvar]
    assert trained == {id(p) for p in expected}
    assert not trained & {id(p) for p in model.first_stage_model.parameters()}
    scheduled = make_model(scheduler_config={"target": "tests.test_latent_diffusion.HalvingSchedule"})
    ([opt], [sched]) = scheduled.configure_optimizers()
    opt.step()
    sched["scheduler"].step()
    assert sched["interval"] == "step" and opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    model.learning_rate = None
    with pytest.raises(ConfigError, match="learning_rate"):
        model.configure_optimizers()


def fake_trainer(rank: int, broadcast_value: float | None = None):
    return SimpleNamespace(global_rank=rank, world_size=2, strategy=SimpleNamespace(
        broadcast=lambda value, src=0: value if broadcast_value is None else broadcast_value))


def test_scale_by_std_is_computed_once_broadcast_and_kept():
    batch = make_batch(4)
    model = make_model(scale_by_std=True)
    model._trainer = fake_trainer(rank=0)
    model.on_train_batch_start(batch, 0)
    with torch.no_grad():
        expected = 1.0 / model.first_stage_model.enc(batch["mri"]).flatten().std()
    torch.testing.assert_close(model.scale_factor, expected)
    z, _ = model.get_input(batch, "mri")
    assert float(z.std()) == pytest.approx(1.0, rel=1e-4)
    model.on_train_batch_start(make_batch(4, seed=1), 1)  # not recomputed on later batches
    torch.testing.assert_close(model.scale_factor, expected)
    # another rank takes rank 0's value from the broadcast instead of its own batch
    other = make_model(scale_by_std=True)
    other._trainer = fake_trainer(rank=1, broadcast_value=0.25)
    other.on_train_batch_start(make_batch(4, seed=2), 0)
    assert float(other.scale_factor) == 0.25
    # a run restored from a checkpoint keeps the stored factor
    resumed = make_model(scale_by_std=True)
    resumed.load_state_dict(model.state_dict())
    resumed._trainer = fake_trainer(rank=0)
    resumed.on_train_batch_start(make_batch(4, seed=3), 0)
    torch.testing.assert_close(resumed.scale_factor, expected)
    with pytest.raises(ConfigError, match="scale_by_std"):
        make_model(scale_by_std=True, scale_factor=0.3)


@pytest.mark.filterwarnings("ignore:You called `self.log")
def test_lightning_fit_logs_raw_and_ema_validation_losses(tmp_path):
    model = make_model(scale_by_std=True)
    data = [{k: v[0] if not isinstance(v, list) else v[0] for k, v in make_batch(1, seed=i).items()} for i in range(4)]
    loader = DataLoader(data, batch_size=2)
    trainer = pl.Trainer(max_steps=1, accumulate_grad_batches=2, limit_val_batches=1, accelerator="cpu",
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path)
    trainer.fit(model, loader, loader)
    metrics = trainer.callback_metrics
    for key in ("train/loss_simple", "val/loss_simple", "val/loss_simple_ema", "val/loss_ema"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert int(model.model_ema.num_updates) == 1  # one optimiser step (two accumulated batches): one EMA update
    assert float(model.scale_factor) != 1.0  # scale_by_std ran at the start of training
    # the validation loss uses fixed t and noise: validating again gives the same value
    first = float(metrics["val/loss_simple"])
    trainer.validate(model, loader, verbose=False)
    assert float(trainer.callback_metrics["val/loss_simple"]) == pytest.approx(first, rel=1e-6)


def test_log_images_and_the_sampler_on_cpu():
    model = make_model().eval()
    with torch.no_grad():
        model.model.diffusion_model.out[2].weight.normal_(0, 0.1)
    batch = make_batch(3)
    log = model.log_images(batch, N=2, split="train")
    assert set(log) == {"ctp_mean", "inputs", "reconstruction", "samples"}
    assert log["ctp_mean"].shape == (2, 1, 16, 16) and log["samples"].shape == (2, 2, 16, 16)
    for value in log.values():
        assert value.min() >= -1 and value.max() <= 1
    torch.testing.assert_close(log["ctp_mean"], batch["ctp"][:2].mean(dim=1, keepdim=True))
    assert torch.equal(model.log_images(batch, N=2)["samples"], log["samples"])  # fixed x_T: comparable logs
    cond = model.get_learned_conditioning(batch["ctp"])
    latents, inter = DDIMSampler(model).sample(S=4, batch_size=3, shape=(3, 4, 4), conditioning=cond, verbose=False)
    assert latents.shape == (3, 3, 4, 4) and latents.device.type == "cpu" and torch.isfinite(latents).all()
    assert len(inter["pred_x0"]) == 3  # x_T, then the first and the last step (log_every_t = 100)


def test_init_from_ckpt_round_trip_and_checks(tmp_path):
    model = make_model()
    with torch.no_grad():
        for p in model.model.parameters():
            p.add_(0.01)
        model.model_ema(model.model)
    path = tmp_path / "ldm.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    restored = make_model(ckpt_path=str(path))
    for k, v in model.state_dict().items():
        assert torch.equal(restored.state_dict()[k], v), k
    assert restored.restarted_from_ckpt
    # weights without EMA: the EMA restarts from them, not from the random initialisation
    raw_only = {k: v for k, v in model.state_dict().items() if not k.startswith("model_ema.")}
    torch.save(raw_only, tmp_path / "raw.ckpt")
    with pytest.warns(UserWarning, match="no EMA"):
        fresh = make_model(ckpt_path=str(tmp_path / "raw.ckpt"))
    shadow = dict(fresh.model_ema.named_buffers())
    for name, p in fresh.model.named_parameters():
        assert torch.equal(shadow[name.replace(".", "")], p), name
    with pytest.raises(ConfigError, match="noise schedule"):
        make_model(ckpt_path=str(path), linear_end=0.012)
    with pytest.raises(ConfigError, match="does not exist"):
        make_model(ckpt_path=str(tmp_path / "missing.ckpt"))
    # the latent scaling must be the one the checkpoint was trained with
    with pytest.raises(ConfigError, match="without scale_by_std"):
        make_model(ckpt_path=str(path), scale_by_std=True)
    scaled = make_model(scale_by_std=True)
    scaled.scale_factor.fill_(0.7)
    torch.save(scaled.state_dict(), tmp_path / "scaled.ckpt")
    with pytest.raises(ConfigError, match="scale_by_std: true"):
        make_model(ckpt_path=str(tmp_path / "scaled.ckpt"))
    reloaded = make_model(ckpt_path=str(tmp_path / "scaled.ckpt"), scale_by_std=True)
    assert float(reloaded.scale_factor) == pytest.approx(0.7)


def test_compile_switch_routes_the_unet_through_torch_compile(monkeypatch):
    """The wiring (torch.compile itself is tested on CUDA below): compiled once, lazily, with the
    config's options; apply_model runs through it; the state-dict keys do not change."""
    calls = []

    def fake_compile(module, **kwargs):
        calls.append(kwargs)
        return lambda *args, **kw: ("compiled", module(*args, **kw))

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(gaussian_diffusion, "compile_unavailable", lambda *args: None)  # a machine without g++
    eager = make_model()
    compiled = make_model(compile_unet=True, compile_kwargs={"mode": "max-autotune"})
    compiled.load_state_dict(eager.state_dict())
    z, t, c = torch.randn(2, 3, 4, 4), torch.tensor([3, 50]), torch.randn(2, 15, 4, 4)
    assert calls == []
    tag, out = compiled.apply_model(z, t, c)
    compiled.apply_model(z, t, c)
    assert tag == "compiled" and calls == [{"mode": "max-autotune"}]
    torch.testing.assert_close(out, eager.apply_model(z, t, c))
    assert set(compiled.state_dict()) == set(eager.state_dict())


def test_compile_switch_without_a_compiler_refuses_in_one_line_before_compiling(monkeypatch):
    """Without a C++ compiler inductor would fail inside the first forward with a long traceback;
    the model refuses before torch.compile is called, naming the switch. A backend that builds no
    kernels (eager) is not checked."""
    import torch._inductor.cpp_builder as cpp_builder
    from torch._inductor import exc

    def no_compiler(*args, **kwargs):
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", no_compiler)
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, **kw: calls.append(kw) or module)
    assert "C++ compiler" in compile_unavailable("cpu")
    z, t, c = torch.randn(2, 3, 4, 4), torch.tensor([3, 50]), torch.randn(2, 15, 4, 4)
    with pytest.raises(ConfigError, match=r"^compile_unet: .*no working C\+\+ compiler.*compile_unet=false$"):
        make_model(compile_unet=True).apply_model(z, t, c)
    assert calls == []
    make_model(compile_unet=True, compile_kwargs={"backend": "eager"}).apply_model(z, t, c)
    assert calls == [{"backend": "eager"}]


def test_compile_on_a_gpu_needs_triton(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    assert "triton" in compile_unavailable("cuda")
    assert compile_unavailable("cuda", "eager") is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert compile_unavailable("cuda") is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_unet_computes_the_same_on_cuda():
    eager = make_model().cuda()
    compiled = make_model(compile_unet=True).cuda()
    compiled.load_state_dict(eager.state_dict())
    with torch.no_grad():
        for m in (eager, compiled):
            m.model.diffusion_model.out[2].weight.fill_(0.01)
    z, t, c = (torch.randn(2, 3, 4, 4, device="cuda"), torch.tensor([3, 50], device="cuda"),
               torch.randn(2, 15, 4, 4, device="cuda"))
    torch.testing.assert_close(compiled.apply_model(z, t, c), eager.apply_model(z, t, c), rtol=1e-3, atol=1e-4)


def test_stage1_checkpoint_loads_into_the_frozen_first_stage(tmp_path):
    from ldm.models.autoencoder import VQModelInterface

    vq_params = dict(embed_dim=3, n_embed=16, lossconfig={"target": "torch.nn.Identity"},
                     ddconfig=dict(double_z=False, z_channels=3, resolution=16, in_channels=2, out_ch=2, ch=32,
                                   ch_mult=[1, 2, 4], num_res_blocks=1, attn_resolutions=[], dropout=0.0))
    stage1 = VQModelInterface(**vq_params)
    with torch.no_grad():
        for p in stage1.parameters():
            p.add_(0.05)
    torch.save({"state_dict": stage1.state_dict()}, tmp_path / "vqgan.ckpt")
    first_stage_config = {"target": "ldm.models.autoencoder.VQModelInterface",
                          "params": {**vq_params, "ckpt_path": str(tmp_path / "vqgan.ckpt")}}
    model = make_model(first_stage_config=first_stage_config)
    for k, v in stage1.state_dict().items():
        assert torch.equal(model.first_stage_model.state_dict()[k], v), k
    model.train()
    assert not model.first_stage_model.training
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())
    opt = model.configure_optimizers()
    loss, _ = model.shared_step(make_batch(2))
    loss.backward()
    opt.step()
    for k, v in stage1.state_dict().items():
        assert torch.equal(model.first_stage_model.state_dict()[k], v), k
    z, _ = model.get_input(make_batch(2), "mri")
    assert z.shape == (2, 3, 4, 4)
    assert model.decode_first_stage(z).shape == (2, 2, 16, 16)
