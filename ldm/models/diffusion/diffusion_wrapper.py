"""``DiffusionWrapper``: CompVis's holder of the UNet (``model.diffusion_model``), which feeds it
[z_t, c~] when the model is conditioned by channel concatenation (paper Section 2.1). Within
:meth:`DiffusionWrapper.inference_graph` the UNet runs through a frozen graph where that applies
(:mod:`ldm.modules.inference_graph`: CPU, float32, no gradient)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from ldm.modules.diffusionmodules.openaimodel import UNetModel
from ldm.modules.inference_graph import InferenceGraph
from ldm.util import ConfigError, instantiate_from_config

CONDITIONING_KEYS = (None, "concat")


class DiffusionWrapper(nn.Module):
    """Holds the UNet as ``diffusion_model`` and feeds it [z_t, c~] for concat conditioning."""

    def __init__(self, diff_model_config: Mapping, conditioning_key: str | None) -> None:
        super().__init__()
        if conditioning_key not in CONDITIONING_KEYS:
            raise ConfigError(f"conditioning_key {conditioning_key!r} is not supported here; use 'concat' "
                              f"(or null for an unconditional model)")
        self.diffusion_model = instantiate_from_config(diff_model_config)
        self.conditioning_key = conditioning_key
        self.unet_graph: InferenceGraph | None = None  # built at the first inference_graph block
        self.use_unet_graph = False

    @contextlib.contextmanager
    def inference_graph(self, enabled: bool = True) -> Iterator[None]:
        """UNet calls within the block go through :class:`InferenceGraph` (which runs the UNet itself
        wherever a frozen graph does not apply). Only this code base's ``UNetModel``, whose forward
        branches on shapes alone (what tracing keeps right); another network runs as it is."""
        enabled = enabled and isinstance(self.diffusion_model, UNetModel)
        if enabled and self.unet_graph is None:
            self.unet_graph = InferenceGraph(self.diffusion_model)
        previous, self.use_unet_graph = self.use_unet_graph, enabled
        try:
            yield
        finally:
            self.use_unet_graph = previous

    def forward(self, x: torch.Tensor, t: torch.Tensor, c_concat: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        if self.conditioning_key == "concat":
            x = torch.cat([x, *c_concat], dim=1)
        if self.use_unet_graph and self.unet_graph is not None:
            return self.unet_graph(x, t)
        return self.diffusion_model(x, t)
