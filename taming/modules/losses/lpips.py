"""LPIPS perceptual distance (Zhang et al. 2018) with VGG16 features, from local weight files only.

Keys as in CompVis (``scaling_layer.*``, ``net.slice<k>.<i>.*``, ``lin<k>.model.1.weight``), so a
VQGAN checkpoint trained with CompVis code and a perceptual loss loads strictly. Nothing is
downloaded: ``vgg16_weights`` is a torchvision VGG16 state dict (``features.<i>.*`` keys, e.g.
``vgg16-397923af.pth``) and ``lpips_weights`` the LPIPS linear heads (``vgg.pth``, keys
``lin<k>.model.1.weight``). Either file may also be a full LPIPS state dict with both parts.

The network sees RGB; MRI channels (DWI, ADC) are contrasts, not colours, so each channel is
compared on its own (replicated to three channels) and the distances are averaged.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from ldm.util import ConfigError, load_state_dict

# torchvision VGG16 ``features``: conv widths, "M" = max-pool
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # ends at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_CHANNELS = (64, 128, 256, 512, 512)


def _vgg16_features() -> list[nn.Module]:
    layers: list[nn.Module] = []
    in_ch = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = v
    return layers


class VGG16Slices(nn.Module):
    """VGG16 conv trunk cut after relu1_2 ... relu5_3 (CompVis ``vgg16`` keys ``slice<k>.<i>``)."""

    def __init__(self) -> None:
        super().__init__()
        features = _vgg16_features()
        for k, (start, stop) in enumerate(_SLICES, start=1):
            block = nn.Sequential()
            for i in range(start, stop):
                block.add_module(str(i), features[i])
            setattr(self, f"slice{k}", block)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for k in range(1, len(_SLICES) + 1):
            x = getattr(self, f"slice{k}")(x)
            outs.append(x)
        return outs


class ScalingLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-.030, -.088, -.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([.458, .448, .450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """Dropout + 1x1 conv to one channel, without bias (key ``model.1.weight``)."""

    def __init__(self, chn_in: int, chn_out: int = 1, use_dropout: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout()] if use_dropout else [nn.Identity()]
        layers.append(nn.Conv2d(chn_in, chn_out, 1, stride=1, padding=0, bias=False))
        self.model = nn.Sequential(*layers)


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


def _check_file(path: str | None, key: str) -> str:
    if not path:
        raise ConfigError(f"perceptual loss requested (perceptual_weight > 0) but lossconfig.params.{key} is "
                          f"not set: give a local weight file (nothing is downloaded), or set perceptual_weight: 0")
    if not os.path.isfile(path):
        raise ConfigError(f"perceptual loss: lossconfig.params.{key} file {path!r} does not exist")
    return path


class LPIPS(nn.Module):
    """d(x, y) per image, shape (B, 1, 1, 1); inputs in [-1, 1] with any number of channels."""

    def __init__(self, vgg16_weights: str | None, lpips_weights: str | None, use_dropout: bool = True) -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.chns = list(_CHANNELS)
        self.net = VGG16Slices()
        for k, c in enumerate(self.chns):
            setattr(self, f"lin{k}", NetLinLayer(c, use_dropout=use_dropout))
        self._load(_check_file(vgg16_weights, "vgg16_weights"), _check_file(lpips_weights, "lpips_weights"))
        self.requires_grad_(False)
        self.eval()

    def _load(self, vgg_path: str, lpips_path: str) -> None:
        wanted = self.state_dict()
        found: dict[str, torch.Tensor] = {}
        for path in (vgg_path, lpips_path):
            for key, value in load_state_dict(path).items():
                key = key.removeprefix("module.")
                if key.startswith("features."):  # torchvision VGG16 -> our slices
                    index = int(key.split(".")[1])
                    slice_k = next((k for k, (a, b) in enumerate(_SLICES, 1) if a <= index < b), None)
                    if slice_k is None:
                        continue  # layers after relu5_3 are not used
                    key = f"net.slice{slice_k}.{key.split('.', 1)[1]}"
                if key in wanted:
                    found[key] = value
        missing = [k for k in wanted if k not in found and not k.startswith("scaling_layer.")]
        if missing:
            raise ConfigError(f"perceptual loss: weights for {missing[0]!r} are in neither {vgg_path!r} "
                              f"nor {lpips_path!r} ({len(missing)} missing)")
        for key, value in found.items():
            if value.shape != wanted[key].shape:
                raise ConfigError(f"perceptual loss: {key!r} has shape {tuple(value.shape)} in the weight files, "
                                  f"expected {tuple(wanted[key].shape)}")
        self.load_state_dict(found, strict=False)

    def train(self, mode: bool = True) -> "LPIPS":
        return super().train(False)  # a fixed metric: dropout stays off

    def _distance_rgb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats_x = self.net(self.scaling_layer(x))
        feats_y = self.net(self.scaling_layer(y))
        total = 0.0
        for k, (fx, fy) in enumerate(zip(feats_x, feats_y)):
            diff = (normalize_tensor(fx) - normalize_tensor(fy)) ** 2
            total = total + getattr(self, f"lin{k}").model(diff).mean(dim=(2, 3), keepdim=True)
        return total

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.shape[1] == 3:
            return self._distance_rgb(input, target)
        per_channel = [self._distance_rgb(input[:, c:c + 1].expand(-1, 3, -1, -1),
                                          target[:, c:c + 1].expand(-1, 3, -1, -1))
                       for c in range(input.shape[1])]
        return torch.stack(per_channel).mean(0)
