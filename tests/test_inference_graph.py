"""ldm.modules.inference_graph: the traced, frozen UNet gives the eager outputs bit for bit, only where
it applies (CPU, float32, no gradient, no autocast, eval mode), one graph per input shape, rebuilt
after the weights change; what cannot be traced runs eagerly; the slice sampler uses it."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from ldm.inference.slice_sampler import make_slice_sampler
from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.inference_graph import InferenceGraph
from tests.helpers.lapt_models import build, make_batch, stage2_config


def tiny_unet() -> UNetModel:
    torch.manual_seed(0)
    unet = UNetModel(image_size=8, in_channels=18, out_channels=3, model_channels=32, num_res_blocks=1,
                     attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=8).eval()
    with torch.no_grad():  # the last convolution starts at zero (CompVis): every output would be 0
        for p in unet.out.parameters():
            p.normal_(0.0, 0.05)
    return unet


def counting(graph: InferenceGraph) -> list[tuple]:
    built = []
    build_one = graph._build

    def _build(inputs):
        built.append(tuple(x.shape for x in inputs))
        return build_one(inputs)

    graph._build = _build
    return built


def inputs(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 18, 8, 8, generator=g), torch.randint(0, 1000, (batch,), generator=g)


def test_the_frozen_graph_gives_the_eager_outputs_bit_for_bit_one_graph_per_shape():
    unet = tiny_unet()
    graph = InferenceGraph(unet)
    built = counting(graph)
    with torch.inference_mode():
        for batch, seed in ((2, 0), (2, 1), (3, 2), (2, 3)):
            x, t = inputs(batch, seed)
            assert torch.equal(graph(x, t), unet(x, t))
    assert built == [((2, 18, 8, 8), (2,)), ((3, 18, 8, 8), (3,))]


def test_the_graph_is_rebuilt_when_the_weights_change():
    unet = tiny_unet()
    graph = InferenceGraph(unet)
    built = counting(graph)
    x, t = inputs(2, 0)
    with torch.no_grad():
        before = graph(x, t)
        unet.out[2].weight.mul_(2.0)  # what an EMA swap or load_state_dict does: write in place
        after = graph(x, t)
        assert torch.equal(after, unet(x, t)) and not torch.equal(after, before)
        unet.load_state_dict(tiny_unet().state_dict())
        assert torch.equal(graph(x, t), before)
    assert len(built) == 3


def test_where_it_does_not_apply_the_module_runs_itself():
    unet = tiny_unet()
    graph = InferenceGraph(unet)
    built = counting(graph)
    x, t = inputs(2, 0)
    out = graph(x, t)  # gradients on: training or a differentiable call
    assert out.requires_grad and not graph.applies(x, t)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not graph.applies(x, t)
        assert not graph.applies(x.double(), t)
        unet.train()
        assert not graph.applies(x, t)
        graph(x, t)
        unet.eval()
        assert graph.applies(x, t)
    assert built == []


class Untraceable(nn.Module):
    def forward(self, x: torch.Tensor) -> dict:
        return {"y": 2 * x, "label": "not a tensor"}


def test_a_module_that_cannot_be_traced_runs_eagerly_with_one_warning():
    graph = InferenceGraph(Untraceable().eval())
    x = torch.randn(2, 3)
    with torch.no_grad():
        with pytest.warns(UserWarning, match="could not be traced"):
            out = graph(x)
        assert torch.equal(out["y"], 2 * x) and graph.failed
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert torch.equal(graph(x)["y"], 2 * x)


def test_the_slice_sampler_runs_the_unet_through_the_graph_with_the_same_images():
    torch.manual_seed(0)
    model = build(stage2_config(use_ema=False)).eval()
    with torch.no_grad():
        for p in model.model.diffusion_model.out.parameters():
            p.normal_(0.0, 0.05)
    ctp = make_batch(b=3)["ctp"]
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    eager = make_slice_sampler(model, steps=4, eta=0.0)
    eager.inference_graph = False
    reference = eager(ctp, lambda shape: noise.clone())
    assert model.model.unet_graph is None
    images = make_slice_sampler(model, steps=4, eta=0.0)(ctp, lambda shape: noise.clone())
    assert torch.equal(images, reference)
    graph = model.model.unet_graph
    assert graph is not None and len(graph._graphs) == 1 and graph.failed is None
    assert not model.model.use_unet_graph  # only within the sampler's call
    assert set(model.state_dict()) == set(build(stage2_config(use_ema=False)).state_dict())
