"""The image-space objectives (Eqs. 6-8) as pure functions: formulas, normalisation, edge cases."""
import numpy as np
import pytest
import torch

from ldm.models.diffusion.image_space_loss import (
    ImageSpaceObjective,
    combine_objectives,
    image_space_losses,
)


def _batch(b=3, h=8, w=6, lesion_slices=(0, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 2, h, w, generator=g) * 2 - 1
    x_hat = torch.rand(b, 2, h, w, generator=g) * 2 - 1
    mask = (torch.rand(b, 1, h, w, generator=g) > 0.3).float()
    lesion = torch.zeros(b, 1, h, w)
    for i in lesion_slices:
        lesion[i, 0, 2:5, 1:4] = 1.0
    return x, x_hat, mask, lesion * mask


def _reference_loops(x, x_hat, mask, lesion, weight=None):
    """Independent computation with explicit loops over slices, channels and pixels (numpy)."""
    x, x_hat, mask, lesion = (a.detach().double().numpy() for a in (x, x_hat, mask, lesion))
    b, c, h, w = x.shape
    weight = np.ones(b) if weight is None else np.asarray(weight, dtype=float)
    num_i = num_l = n_brain = n_lesion = 0.0
    for i in range(b):
        if weight[i] == 0:
            continue
        for yy in range(h):
            for xx in range(w):
                err = sum((x[i, ch, yy, xx] - x_hat[i, ch, yy, xx]) ** 2 for ch in range(c))
                num_i += weight[i] * err
                num_l += weight[i] * lesion[i, 0, yy, xx] * err
                n_brain += mask[i, 0, yy, xx]
                n_lesion += lesion[i, 0, yy, xx]
    return num_i / n_brain, (num_l / n_lesion if n_lesion else 0.0)


def test_losses_equal_loop_computation_of_eqs_6_and_7():
    x, x_hat, mask, lesion = _batch()
    li, ll = image_space_losses(x_hat, x, mask, lesion)
    ref_i, ref_l = _reference_loops(x, x_hat, mask, lesion)
    assert li.item() == pytest.approx(ref_i, rel=1e-5)
    assert ll.item() == pytest.approx(ref_l, rel=1e-5)


def test_normalisation_differs_from_plain_mean_as_documented():
    x, x_hat, mask, lesion = _batch()
    li, ll = image_space_losses(x_hat, x, mask, lesion)
    b, c, h, w = x.shape
    plain = torch.nn.functional.mse_loss(x_hat, x)
    # summed over 2 channels and all pixels, divided by the brain pixel count
    assert li.item() == pytest.approx(plain.item() * c * b * h * w / mask.sum().item(), rel=1e-5)
    masked_mean = (((x_hat - x) ** 2) * lesion).sum() / (lesion.sum() * c)
    assert ll.item() == pytest.approx(c * masked_mean.item(), rel=1e-5)


def test_lesion_free_batch_gives_zero_and_finite_gradients():
    x, x_hat, mask, lesion = _batch(lesion_slices=())
    x_hat.requires_grad_(True)
    li, ll = image_space_losses(x_hat, x, mask, lesion)
    assert ll.item() == 0.0 and torch.isfinite(li)
    (li + ll).backward()
    assert torch.isfinite(x_hat.grad).all()
    # the lesion term contributes nothing to the gradient: it equals the image term's alone
    x_hat2 = x_hat.detach().clone().requires_grad_(True)
    image_space_losses(x_hat2, x, mask, lesion)[0].backward()
    torch.testing.assert_close(x_hat.grad, x_hat2.grad)


def test_timestep_weights_drop_slices_from_numerator_and_counts():
    x, x_hat, mask, lesion = _batch(b=4, lesion_slices=(0, 3))
    weight = torch.tensor([0.5, 0.0, 1.0, 0.25])
    li, ll = image_space_losses(x_hat, x, mask, lesion, weight)
    ref_i, ref_l = _reference_loops(x, x_hat, mask, lesion, weight.numpy())
    assert li.item() == pytest.approx(ref_i, rel=1e-5)
    assert ll.item() == pytest.approx(ref_l, rel=1e-5)


def test_bf16_inputs_are_scored_in_float32():
    x, x_hat, mask, lesion = _batch()
    li32, ll32 = image_space_losses(x_hat, x, mask, lesion)
    li16, ll16 = image_space_losses(x_hat.bfloat16(), x, mask, lesion)
    assert li16.dtype == torch.float32
    torch.testing.assert_close(li16, li32, rtol=2e-2, atol=0)
    torch.testing.assert_close(ll16, ll32, rtol=2e-2, atol=0)


def test_shape_errors_name_the_shapes():
    x, x_hat, mask, lesion = _batch()
    with pytest.raises(ValueError, match=r"\(3, 2, 8, 5\)"):
        image_space_losses(x_hat[..., :5], x, mask, lesion)
    with pytest.raises(ValueError, match="lesion must be"):
        image_space_losses(x_hat, x, mask, lesion[:, :, :4])


def test_combine_objectives_is_eq_8_and_exactly_latent_when_lambdas_are_zero():
    latent, image, lesion = torch.tensor(0.3), torch.tensor(2.0), torch.tensor(5.0)
    assert combine_objectives(latent, image, lesion, 0.01, 0.02).item() == pytest.approx(0.3 + 0.02 + 0.1)
    nan = torch.tensor(float("nan"))
    assert combine_objectives(latent, nan, nan, 0.0, 0.0) is latent


def test_objective_rejects_unknown_settings():
    with pytest.raises(ValueError, match="image_target"):
        ImageSpaceObjective(image_target="recon")
    with pytest.raises(ValueError, match="t_weighting"):
        ImageSpaceObjective(t_weighting="snr")
    with pytest.raises(ValueError, match="t_max"):
        ImageSpaceObjective(t_max=0)


def test_timestep_weight_restriction_and_alphas_cumprod():
    t = torch.tensor([0, 10, 500, 999])
    assert ImageSpaceObjective().timestep_weight(t) is None
    w = ImageSpaceObjective(t_max=500).timestep_weight(t)
    assert w.tolist() == [1.0, 1.0, 0.0, 0.0]
    abar = torch.linspace(1.0, 0.0, 1000)
    w = ImageSpaceObjective(t_max=600, t_weighting="alphas_cumprod").timestep_weight(t, abar)
    torch.testing.assert_close(w, torch.stack([abar[0], abar[10], abar[500], torch.tensor(0.0)]))
