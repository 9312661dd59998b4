"""Classifiers for distillation: build from a config name, load local weights, measure accuracy.

`CLASSIFIERS` maps a name to a builder `(num_classes) -> nn.Module` taking images [B, 3, H, W]
to logits [B, K]: torchvision ResNets (their state dict keeps torchvision's names, so a distilled
student loads into MODEL.VISUAL.WEIGHTS and MODEL.BACKBONE.WEIGHTS) and CIFAR WideResNets
(WRN-depth-width, Zagoruyko & Komodakis 2016) for the paper's CIFAR settings.
"""

from __future__ import annotations

import functools
import logging
import os

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from avdet.engine.checkpoint import load_model_state, read_model_state
from avdet.utils.registry import Registry

logger = logging.getLogger(__name__)

CLASSIFIERS = Registry("classifier")
for _name in ("resnet18", "resnet34", "resnet50"):
    CLASSIFIERS.register(_name)(functools.partial(getattr(torchvision.models, _name), weights=None))


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, 1x1 conv shortcut if needed."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(x))
        residual = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.relu(self.bn2(out)))
        return out + residual


class WideResNet(nn.Module):
    """WRN-depth-width for 32 px inputs: conv3x3(16), three groups of (depth - 4) / 6 blocks with
    16w, 32w, 64w channels (strides 1, 2, 2), BN-ReLU, global average pool, linear."""

    def __init__(self, depth: int, width: int, num_classes: int) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        blocks = (depth - 4) // 6
        widths = (16 * width, 32 * width, 64 * width)
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        groups, in_planes = [], 16
        for planes, stride in zip(widths, (1, 2, 2), strict=True):
            layers = []
            for i in range(blocks):
                layers.append(WideBasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            groups.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.stem(x))))
        x = self.relu(self.bn(x)).mean(dim=(2, 3))
        return self.fc(x)


for _depth, _width in ((16, 2), (16, 4), (40, 2), (40, 4), (28, 10)):
    CLASSIFIERS.register(f"wrn_{_depth}_{_width}")(functools.partial(WideResNet, _depth, _width))


def build_classifier(arch: str, num_classes: int) -> nn.Module:
    """A randomly initialised classifier `arch` (see CLASSIFIERS.names()) with K outputs."""
    if num_classes <= 0:
        raise ValueError(f"DISTILL.NUM_CLASSES must be positive, got {num_classes}")
    return CLASSIFIERS.get(arch)(num_classes=num_classes)


def load_classifier(arch: str, num_classes: int, path: str | os.PathLike) -> nn.Module:
    """`build_classifier` with every tensor loaded from `path` (a state dict, or a checkpoint
    holding {"model": state dict}); a missing, extra or mis-shaped key is an error naming it."""
    model = build_classifier(arch, num_classes)
    load_model_state(model, read_model_state(path), source=str(path))
    logger.info("loaded %s (%d classes) from %s", arch, num_classes, path)
    return model


class Distiller(nn.Module):
    """A frozen teacher and a trainable student; forward(images [B, 3, H, W]) ->
    (student logits [B, K], teacher logits [B, K]).

    One module so that the engine checkpoints and DDP-wraps them together: the teacher stays in
    eval mode (BatchNorm statistics frozen) and gets no gradient. The student's tensors are
    `student.*` in the checkpoint, a prefix `avdet.models.weights` knows.
    `freeze_student_bn`: the student's BatchNorm layers stay in eval mode too, for fine-tuning a
    model whose statistics come from real data (compression): patch statistics would replace them.
    """

    def __init__(
        self, teacher: nn.Module, student: nn.Module, freeze_student_bn: bool = False
    ) -> None:
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student
        self.freeze_student_bn = freeze_student_bn

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        if self.freeze_student_bn:
            for module in self.student.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return self.student(images), teacher_logits


@torch.no_grad()
def predict(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class [N], label [N]) of `model` in eval mode over `dataset` of (image, label)."""
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for images, targets in tqdm(loader, desc="evaluate", unit="batch", leave=False):
        predictions.append(model(images.to(device)).argmax(dim=-1).cpu())
        labels.append(targets)
    model.train(was_training)
    return torch.cat(predictions), torch.cat(labels)


def accuracy(
    model: nn.Module, dataset: Dataset, batch_size: int = 256, device: str | torch.device = "cpu"
) -> float:
    """Top-1 accuracy in [0, 1] of `model` over a labelled dataset of (image, label) items."""
    predictions, labels = predict(model, dataset, batch_size, device)
    return float((predictions == labels).float().mean())
