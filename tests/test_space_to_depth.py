"""SpaceToDepth: the condition on the latent grid without averaging (docs/training.md)."""
import pytest
import torch
import torch.nn.functional as F

from ldm.modules.encoders.modules import SpaceToDepth, SpatialRescaler


def test_every_pixel_reaches_the_latent_grid_and_comes_back():
    c = torch.randn(2, 15, 16, 12)
    out = SpaceToDepth(factor=4, in_channels=15)(c)
    assert out.shape == (2, 15 * 16, 4, 3)
    torch.testing.assert_close(F.pixel_shuffle(out, 4), c)  # nothing lost
    # channel k * 16 + 4 * i + j holds pixel (4 y + i, 4 x + j) of frame k
    assert out[1, 7 * 16 + 4 * 2 + 3, 1, 2] == c[1, 7, 4 * 1 + 2, 4 * 2 + 3]


def test_a_one_pixel_lesion_keeps_its_contrast_where_the_rescaler_averages_it_away():
    c = torch.zeros(1, 15, 16, 16)
    c[0, :, 5, 6] = 1.0
    rescaled = SpatialRescaler(n_stages=2, method="bilinear", multiplier=0.5, in_channels=15)(c)
    assert float(rescaled.abs().max()) <= 1 / 16 + 1e-6
    assert float(SpaceToDepth(factor=4, in_channels=15)(c).abs().max()) == 1.0


def test_the_channel_mapper_is_a_1x1_convolution_of_the_unshuffled_condition():
    torch.manual_seed(0)
    enc = SpaceToDepth(factor=2, in_channels=3, out_channels=5, bias=True)
    c = torch.randn(2, 3, 8, 8)
    u = F.pixel_unshuffle(c, 2)
    w, b = enc.channel_mapper.weight[:, :, 0, 0], enc.channel_mapper.bias
    expected = torch.einsum("oc,bchw->bohw", w, u) + b.view(1, -1, 1, 1)
    torch.testing.assert_close(enc(c), expected)
    assert enc(c).shape == (2, 5, 4, 4)
    assert enc.encode(c).shape == (2, 5, 4, 4)


@pytest.mark.parametrize("shape", [(1, 14, 16, 16), (1, 15, 18, 16), (15, 16, 16)])
def test_a_condition_of_the_wrong_shape_is_refused(shape):
    with pytest.raises(ValueError, match="SpaceToDepth expects"):
        SpaceToDepth(factor=4, in_channels=15)(torch.zeros(shape))


def test_a_factor_below_one_is_refused():
    with pytest.raises(ValueError, match="factor"):
        SpaceToDepth(factor=0)
