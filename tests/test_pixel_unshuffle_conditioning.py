"""SpatialRescaler's pixel_unshuffle: the condition on the latent grid without averaging (docs/training.md)."""
import pytest
import torch
import torch.nn.functional as F

from ldm.modules.encoders.modules import SpatialRescaler


def unshuffler(**kw) -> SpatialRescaler:
    return SpatialRescaler(**{"n_stages": 2, "method": "pixel_unshuffle", "multiplier": 0.5, "in_channels": 15, **kw})


def test_every_pixel_reaches_the_latent_grid_and_comes_back():
    c = torch.randn(2, 15, 16, 12)
    out = unshuffler()(c)
    assert out.shape == (2, 15 * 16, 4, 3)
    torch.testing.assert_close(F.pixel_shuffle(out, 4), c)  # nothing lost
    # channel 16 k + 4 i + j holds pixel (4 y + i, 4 x + j) of frame k
    assert out[1, 7 * 16 + 4 * 2 + 3, 1, 2] == c[1, 7, 4 * 1 + 2, 4 * 2 + 3]


def test_a_one_pixel_lesion_keeps_its_contrast_where_bilinear_averages_it_away():
    c = torch.zeros(1, 15, 16, 16)
    c[0, :, 5, 6] = 1.0
    bilinear = SpatialRescaler(n_stages=2, method="bilinear", multiplier=0.5, in_channels=15)(c)
    assert bilinear.shape[-2:] == (4, 4) and float(bilinear.abs().max()) <= 1 / 16 + 1e-6
    assert float(unshuffler()(c).abs().max()) == 1.0


def test_the_channel_mapper_is_a_1x1_convolution_of_the_unshuffled_condition():
    torch.manual_seed(0)
    enc = unshuffler(n_stages=1, in_channels=3, out_channels=5, bias=True)
    c = torch.randn(2, 3, 8, 8)
    w, b = enc.channel_mapper.weight[:, :, 0, 0], enc.channel_mapper.bias
    assert w.shape == (5, 12)  # 3 frames x 2 x 2 pixels in, the UNet's 5 channels out
    expected = torch.einsum("oc,bchw->bohw", w, F.pixel_unshuffle(c, 2)) + b.view(1, -1, 1, 1)
    torch.testing.assert_close(enc(c), expected)
    assert enc.encode(c).shape == (2, 5, 4, 4)


def test_the_demo_config_switch_keeps_the_unets_input():
    """out_channels 15 as in the paper's rescaler: the UNet's in_channels does not change."""
    c = torch.randn(1, 15, 64, 64)
    assert unshuffler(out_channels=15)(c).shape == SpatialRescaler(2, "bilinear", 0.5, 15, 15)(c).shape == (1, 15, 16, 16)


@pytest.mark.parametrize("shape", [(1, 14, 16, 16), (1, 15, 18, 16), (15, 16, 16)])
def test_a_condition_of_the_wrong_shape_is_refused(shape):
    with pytest.raises(ValueError, match="SpatialRescaler expects"):
        unshuffler(out_channels=15)(torch.zeros(shape))


@pytest.mark.parametrize("multiplier, n_stages", [(0.4, 1), (2.0, 1), (0.0, 2)])
def test_a_scale_that_is_not_a_whole_block_is_refused(multiplier, n_stages):
    with pytest.raises(ValueError, match="pixel_unshuffle needs"):
        unshuffler(multiplier=multiplier, n_stages=n_stages)


def test_a_latent_model_trains_its_unshuffling_rescaler_and_refuses_a_bilinear_checkpoint(tmp_path):
    from ldm.util import ConfigError
    from tests.test_latent_diffusion import RESCALER, make_batch, make_model

    unshuffling = {**RESCALER, "params": {**RESCALER["params"], "method": "pixel_unshuffle"}}
    model = make_model(cond_stage_config=unshuffling)
    assert model.cond_stage_model.channel_mapper.weight.shape == (15, 15 * 16, 1, 1)
    with torch.no_grad():  # the UNet's last convolution starts at zero, which would pass no gradient back
        for p in model.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    loss, _ = model.shared_step(make_batch())
    loss.backward()
    assert model.cond_stage_model.channel_mapper.weight.grad.abs().sum() > 0  # trained with the UNet
    path = tmp_path / "bilinear.ckpt"
    torch.save({"state_dict": make_model().state_dict()}, path)
    with pytest.raises(ConfigError, match="channel_mapper.weight"):
        make_model(cond_stage_config=unshuffling, ckpt_path=str(path))
