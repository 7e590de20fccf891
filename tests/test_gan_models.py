"""The GAN baselines (ldm/models/gan): networks at 64 x 64 and 192 x 224, the pad-and-crop for sizes
the strides do not divide, the loss equations against hand computations, the image pool, which
player's weights each step's gradients reach, and the one-line refusals of bad configs."""
from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ldm.models.gan.adversarial_loss import AdversarialLoss
from ldm.models.gan.cycle_loss import cycle_losses, weighted_l1
from ldm.models.gan.image_pool import ImagePool
from ldm.models.gan.patchgan import InstanceNormPatchGAN, PatchGAN
from ldm.models.gan.resnet_generator import ResnetGenerator
from ldm.models.gan.sizing import pad_to_multiple
from ldm.models.gan.unet_generator import UNetGenerator
from ldm.util import ConfigError, instantiate_from_config
from tests.helpers.gan_models import batch, build, model_config

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

SIZES = [(64, 64), (192, 224)]


# -- networks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_unet_generator_takes_the_paper_size_by_padding_with_background_and_cropping_back(size):
    g = UNetGenerator(15, 2, ngf=4, num_downs=8).eval()  # 2^8 = 256 divides neither 192 nor 224
    x = torch.rand(2, 15, *size) * 2 - 1
    with torch.no_grad():
        y = g(x)
        padded, _ = pad_to_multiple(x, 256)
        assert padded.shape[-2:] == (256, 256)
        assert torch.equal(padded[..., : size[0], : size[1]], x)
        assert (padded[..., size[0]:, :] == -1).all() and (padded[..., size[1]:] == -1).all()
        # the output is the network's output on the background-padded slice (a multiple of 256, so it
        # is not padded again), cropped back
        full = g(padded)
    assert y.shape == (2, 2, *size)
    torch.testing.assert_close(y, full[..., : size[0], : size[1]])
    assert y.abs().max() <= 1  # tanh


@pytest.mark.parametrize("size", SIZES + [(37, 50)])
def test_resnet_generator_keeps_the_size_both_ways(size):
    forward, backward = ResnetGenerator(15, 2, ngf=4, n_blocks=2), ResnetGenerator(2, 15, ngf=4, n_blocks=1)
    x = torch.rand(1, 15, *size) * 2 - 1
    with torch.no_grad():
        y = forward(x)
        assert y.shape == (1, 2, *size) and backward(y).shape == (1, 15, *size)
    if size == (37, 50):  # not a multiple of 4: padded to 40 x 52 with background and cropped back
        padded, _ = pad_to_multiple(x, 4)
        with torch.no_grad():
            torch.testing.assert_close(y, forward(padded)[..., :37, :50])


@pytest.mark.parametrize("size", SIZES)
def test_patchgan_scores_overlapping_patches_and_is_taming_network(size):
    from taming.modules.discriminator.model import NLayerDiscriminator

    d, d_in = PatchGAN(17, ndf=4), InstanceNormPatchGAN(2, ndf=4)
    assert isinstance(d, NLayerDiscriminator)  # shared, not copied
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d_in.modules())
    with torch.no_grad():
        score = d(torch.randn(1, 17, *size))
    # three stride-2 and two stride-1 4x4 convolutions: H/8 - 2 patches per side
    assert score.shape == (1, 1, size[0] // 8 - 2, size[1] // 8 - 2) == (1, 1, *d.patch_grid(size))
    assert d.min_size() == 24 and d_in.min_size() == 24


def test_receptive_field_of_the_patchgan_is_70_pixels():
    d = PatchGAN(1, ndf=4).eval()
    x = torch.zeros(1, 1, 128, 128, requires_grad=True)
    d(x)[0, 0, 6, 6].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    assert int(rows.max() - rows.min()) + 1 == 70


# -- losses --------------------------------------------------------------------------------------
def test_lsgan_and_vanilla_losses_match_hand_computation():
    real, fake = torch.tensor([[0.2, 0.7]]), torch.tensor([[0.1, -0.3]])
    ls = AdversarialLoss("lsgan")
    assert float(ls(real, True)) == pytest.approx(((0.2 - 1) ** 2 + (0.7 - 1) ** 2) / 2)
    assert float(ls(fake, False)) == pytest.approx((0.1 ** 2 + 0.3 ** 2) / 2)
    assert float(ls.discriminator(real, fake)) == pytest.approx(0.5 * (0.365 + 0.05))
    bce = AdversarialLoss("vanilla")
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    assert float(bce(real, True)) == pytest.approx(-(math.log(sig(0.2)) + math.log(sig(0.7))) / 2)
    assert float(bce(fake, False)) == pytest.approx(-(math.log(1 - sig(0.1)) + math.log(1 - sig(-0.3))) / 2)


def test_cycle_and_l1_weights_match_hand_computation():
    x, x_cycled = torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5])
    y, y_cycled = torch.tensor([1.0, -1.0]), torch.tensor([1.0, 0.0])
    forward, backward = cycle_losses(x, x_cycled, y, y_cycled, 10.0, 10.0)
    assert float(forward) == pytest.approx(10 * 0.5) and float(backward) == pytest.approx(10 * 0.5)
    assert float(weighted_l1(x_cycled, x, 100.0)) == pytest.approx(50.0)
    assert float(weighted_l1(x_cycled, x, 0.0)) == 0.0


def test_pix2pix_generator_loss_is_cgan_plus_100_l1():
    model = build("pix2pix").eval()  # eval: the same dropout-free generator output both times
    ctp, mri = (t for t in list(batch().values())[:2])
    with torch.no_grad():
        fake = model.generator(ctp)
        loss, log = model.generator_loss(ctp, mri, fake)
        score = model.discriminator(torch.cat([ctp, fake], 1))
    expected_gan = F.binary_cross_entropy_with_logits(score, torch.ones_like(score))
    expected_l1 = 100 * (fake - mri).abs().mean()
    assert float(log["train/g_l1"]) == pytest.approx(float(expected_l1), rel=1e-5)
    assert float(loss) == pytest.approx(float(expected_gan + expected_l1), rel=1e-5)
    with torch.no_grad():
        loss_d, _ = model.discriminator_loss(ctp, mri, fake)
        real = model.discriminator(torch.cat([ctp, mri], 1))
    expected_d = 0.5 * (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                        + F.binary_cross_entropy_with_logits(score, torch.zeros_like(score)))
    assert float(loss_d) == pytest.approx(float(expected_d), rel=1e-5)


@pytest.mark.parametrize("kind", ["cyclegan", "paired_cyclegan"])
def test_cycle_generator_losses_match_hand_computation(kind):
    model = build(kind).eval()
    ctp, mri = (t for t in list(batch().values())[:2])
    with torch.no_grad():
        loss, log, (fake_mri, fake_ctp) = model.generator_loss(ctp, mri)
        G, Fn = model.generator, model.inverse_generator
        expected = (((model.discriminator(G(ctp)) - 1) ** 2).mean() + ((model.inverse_discriminator(Fn(mri)) - 1) ** 2).mean()
                    + 10 * (Fn(G(ctp)) - ctp).abs().mean() + 10 * (G(Fn(mri)) - mri).abs().mean())
        if kind == "paired_cyclegan":
            expected = expected + ((model.pair_discriminator(torch.cat([ctp, G(ctp)], 1)) - 1) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert torch.equal(fake_mri, G(ctp).detach()) and fake_ctp.shape == ctp.shape


# -- image pool ----------------------------------------------------------------------------------
def test_image_pool_fills_then_returns_history_half_of_the_time():
    torch.manual_seed(0)
    pool = ImagePool(3)
    first = torch.arange(3.0).view(3, 1, 1, 1).requires_grad_()
    out = pool.query(first)
    assert torch.equal(out, first.detach()) and not out.requires_grad and len(pool) == 3
    history, swaps = {0.0, 1.0, 2.0}, 0
    for i in range(400):
        new = torch.full((1, 1, 1, 1), 10.0 + i)
        got = float(pool.query(new))
        stored = {float(t) for t in pool.images}
        if got == 10.0 + i:  # the new image itself, the pool unchanged
            assert new.item() not in stored
        else:  # an older fake, replaced by the new one
            assert got in history and new.item() in stored
            swaps += 1
        history |= stored
        assert len(pool) == 3
    assert 160 < swaps < 240  # p = 1/2 (binomial sd 10)
    assert torch.equal(ImagePool(0).query(first), first)


# -- which weights each player's loss reaches -----------------------------------------------------
class _Batches(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        b = batch(1, seed=i)
        return {k: v[0] for k, v in b.items()}


@pytest.mark.parametrize("kind", ["pix2pix", "cyclegan", "paired_cyclegan"])
def test_each_step_reaches_only_its_players_weights(kind):
    model = build(kind)
    model.learning_rate = 2e-4
    generators = [n for n, _ in model.named_parameters() if "generator" in n]
    discriminators = [n for n, _ in model.named_parameters() if "discriminator" in n]
    assert generators and discriminators and len(generators) + len(discriminators) == len(list(model.parameters()))
    reached = []
    backward = model.manual_backward

    def spy(loss, *args, **kwargs):
        backward(loss, *args, **kwargs)
        reached.append({n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0})

    model.manual_backward = spy
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(_Batches(), batch_size=2))
    d_first = kind == "pix2pix"  # pix2pix updates D first, the cycle GANs G first (as the releases)
    d_step, g_step = (reached[0], reached[1]) if d_first else (reached[1], reached[0])
    assert d_step == set(discriminators), "the discriminator step must reach every D weight and no G weight"
    assert g_step <= set(generators) and len(g_step) > 0.9 * len(generators), \
        "the generator step must reach the generators and no discriminator weight"
    assert model.generator_updates == 1 and trainer.global_step == 2  # both optimisers count in global_step
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if n.endswith("weight"))


# -- bad configs -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, params, key", [
    ("pix2pix", {"sampler": "ddim"}, "'sampler'"),
    ("cyclegan", {"timesteps": 1000}, "'timesteps'"),
    ("pix2pix", {"image_size": [16, 16]}, "model.params.image_size 16 x 16"),
    ("cyclegan", {"lambda_identity": 0.5}, "model.params.lambda_identity"),
])
def test_bad_gan_configs_are_one_line_naming_the_key(kind, params, key):
    cfg = model_config(kind)
    cfg["params"].update(params)
    with pytest.raises(ConfigError) as e:
        instantiate_from_config(cfg)
    message = str(e.value)
    assert key in message and "\n" not in message, message
    if "sampler" in params:
        assert "is a GAN" in message


@pytest.mark.parametrize("kind", ["pix2pix", "cyclegan", "paired_cyclegan"])
def test_a_generator_that_does_not_output_two_channels_is_refused(kind):
    cfg = model_config(kind)
    cfg["params"]["generator_config"]["params"]["out_channels"] = 3
    with pytest.raises(ConfigError, match=r"generator_config.params.out_channels is 3: it must be 2"):
        instantiate_from_config(cfg)


def test_data_of_another_size_than_image_size_is_named():
    model = build("pix2pix")
    with pytest.raises(ConfigError, match="model.params.image_size is 32 x 32 but the data's slices are 64 x 64"):
        model.get_input(batch(size=(64, 64)))
