"""The two towers: a ResNet over the frame keeping its spatial map, a ResNet over the spectrogram.

Both are torchvision ResNets (random init, no downloads); registries map config names to builders
so a new tower is one decorated function.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from avdet.utils.registry import Registry

RESNETS = Registry("resnet")
for _name in ("resnet18", "resnet34", "resnet50"):
    RESNETS.register(_name)(getattr(torchvision.models, _name))

_STAGES = ("layer1", "layer2", "layer3", "layer4")


def resnet_trunk(arch: str, last_stage: str, in_channels: int = 3) -> tuple[nn.Sequential, int]:
    """A torchvision ResNet cut after `last_stage` (no pooling, no fc) and its output channels.

    Submodule names stay torchvision's (`conv1`, `bn1`, `layer1`, ...) so a torchvision ResNet
    state dict, or a distilled student, loads into it by name.
    """
    if last_stage not in _STAGES:
        raise ValueError(f"last stage must be one of {_STAGES}; got {last_stage!r}")
    net = RESNETS.get(arch)(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    keep = ["conv1", "bn1", "relu", "maxpool", *_STAGES[: _STAGES.index(last_stage) + 1]]
    trunk = nn.Sequential()
    for name in keep:
        trunk.add_module(name, getattr(net, name))
    channels = getattr(net, last_stage)[-1]
    out_channels = (
        channels.bn3.num_features if hasattr(channels, "bn3") else channels.bn2.num_features
    )
    return trunk, out_channels


class VisualTower(nn.Module):
    """Frame [B, 3, H, W] -> feature map [B, C, h, w] (trunk) -> embedding map [B, D, h, w] (1x1 conv)."""

    def __init__(self, arch: str, last_stage: str, embed_dim: int) -> None:
        super().__init__()
        self.trunk, self.out_channels = resnet_trunk(arch, last_stage)
        self.proj = nn.Conv2d(self.out_channels, embed_dim, kernel_size=1)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (trunk features [B, C, h, w], unnormalised embedding map [B, D, h, w])."""
        features = self.trunk(frames)
        return features, self.proj(features)


class AudioTower(nn.Module):
    """Spectrogram [B, 1, F, T] -> pooled trunk feature [B, C] -> embedding [B, D]."""

    def __init__(self, arch: str, last_stage: str, embed_dim: int) -> None:
        super().__init__()
        self.trunk, self.out_channels = resnet_trunk(arch, last_stage, in_channels=1)
        self.proj = nn.Linear(self.out_channels, embed_dim)

    def forward(self, spectrograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (pooled trunk feature [B, C], unnormalised embedding [B, D])."""
        pooled = self.trunk(spectrograms).amax(dim=(2, 3))
        return pooled, self.proj(pooled)
