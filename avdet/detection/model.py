"""torchvision Faster R-CNN with FPN built from config (MODEL.BACKBONE/FPN/ANCHOR_GENERATOR/RPN/ROI_HEADS).

Normalisation: every backbone stage uses plain BatchNorm2d (batch statistics while training).
torchvision freezes BatchNorm for ImageNet-pretrained backbones, but frozen statistics of a random
init are meaningless, and our inits (random, a stage-1 trunk trained on the same frames, a
distilled student) do not justify freezing. Stages frozen by MODEL.BACKBONE.TRAINABLE_LAYERS
(honoured only with MODEL.BACKBONE.WEIGHTS, as in torchvision) get FrozenBatchNorm2d, so their
statistics stay those of the checkpoint (detectron2's FREEZE_AT does the same).

ResNet backbones load MODEL.BACKBONE.WEIGHTS through `load_resnet_state` into
`model.backbone.body`: a torchvision state dict, a stage-1 AV checkpoint (`visual.trunk.`), a
detector (`backbone.body.`) or a distilled student. A stage-1 trunk usually ends at layer3; the
stages a checkpoint lacks keep their random init, with a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import partial

import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from avdet.config import CfgNode, ConfigError
from avdet.engine.checkpoint import load_model_state, read_model_state
from avdet.models.weights import WeightsError, extract_resnet_state, load_resnet_state
from avdet.utils.registry import Registry

logger = logging.getLogger(__name__)

IMAGE_MEAN = [0.485, 0.456, 0.406]  # the normalisation of stage 1 and of torchvision weights
IMAGE_STD = [0.229, 0.224, 0.225]
_RESNET_STAGES = ("conv1", "layer1", "layer2", "layer3", "layer4")  # conv1 stands for conv1+bn1


BACKBONES = Registry("detector backbone")


def _resnet(name: str, cfg: CfgNode) -> tuple[BackboneWithFPN, list[list[str]]]:
    """layer1-4 into the FPN (strides 4-32) plus a max-pooled level: 5 levels; and the stages."""
    net = getattr(torchvision.models, name)(weights=None)  # BatchNorm2d, nothing downloaded
    stage2 = net.inplanes // 8  # torchvision's way: 512 // 8 (basic) or 2048 // 8 (bottleneck)
    fpn = BackboneWithFPN(
        net,
        return_layers={f"layer{k}": str(k - 1) for k in range(1, 5)},
        in_channels_list=[stage2 * 2 ** (k - 1) for k in range(1, 5)],
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
    )
    return fpn, [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


for _name in ("resnet18", "resnet50"):
    BACKBONES.register(_name)(partial(_resnet, _name))


@BACKBONES.register("mobilenet_v3_large")
def _mobilenet_v3_large(cfg: CfgNode) -> tuple[BackboneWithFPN, list[list[str]]]:
    """The last two strided stages into the FPN, as torchvision's fasterrcnn_mobilenet_v3_large_fpn."""
    features = torchvision.models.mobilenet_v3_large(weights=None).features
    starts = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)]
    starts.append(len(features) - 1)
    returned = starts[-2:]
    fpn = BackboneWithFPN(
        features,
        return_layers={str(index): str(level) for level, index in enumerate(returned)},
        in_channels_list=[features[i].out_channels for i in returned],
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
    )
    bounds = [*starts, len(features)]
    stages = [[str(i) for i in range(a, b)] for a, b in zip(bounds, bounds[1:], strict=False)]
    return fpn, [s for s in stages if s]


class MultiScaleTransform(GeneralizedRCNNTransform):
    """torchvision's resize + normalise with separate sizes for training and testing.

    Training draws the shorter side from `train_min_sizes` per image (scale jitter); testing
    uses `test_min_size`. torchvision itself tests at the last training size.
    """

    def __init__(
        self,
        train_min_sizes: Sequence[int],
        train_max_size: int,
        test_min_size: int,
        test_max_size: int,
    ) -> None:
        super().__init__(tuple(train_min_sizes), train_max_size, IMAGE_MEAN, IMAGE_STD)
        self.train_sizes = (tuple(train_min_sizes), train_max_size)
        self.test_sizes = ((test_min_size,), test_max_size)

    def forward(
        self, images: list[torch.Tensor], targets: list[dict] | None = None
    ) -> tuple[ImageList, list[dict] | None]:
        self.min_size, self.max_size = self.train_sizes if self.training else self.test_sizes
        return super().forward(images, targets)


def build_anchor_generator(
    anchor_cfg: CfgNode, num_levels: int, backbone_name: str
) -> AnchorGenerator:
    """From MODEL.ANCHOR_GENERATOR: one tuple of sizes per FPN level; aspect ratios shared by all
    levels or given per level."""
    sizes = tuple(tuple(s) if isinstance(s, Sequence) else (s,) for s in anchor_cfg.SIZES)
    if len(sizes) != num_levels:
        raise ConfigError(
            f"MODEL.ANCHOR_GENERATOR.SIZES has {len(sizes)} tuples but the {backbone_name} FPN "
            f"has {num_levels} levels: give one tuple of sizes per level, e.g. "
            f"{tuple((16 * 2**i,) for i in range(num_levels))}"
        )
    ratios = tuple(anchor_cfg.ASPECT_RATIOS)
    if ratios and isinstance(ratios[0], Sequence):
        if len(ratios) != num_levels:
            raise ConfigError(
                f"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS has {len(ratios)} lists for "
                f"{num_levels} FPN levels: give one list, or one per level"
            )
        ratios = tuple(tuple(r) for r in ratios)
    else:
        ratios = (ratios,) * num_levels
    per_level = {len(s) * len(r) for s, r in zip(sizes, ratios, strict=True)}
    if len(per_level) != 1:
        raise ConfigError(
            "MODEL.ANCHOR_GENERATOR: every FPN level needs the same number of anchors "
            f"(sizes x aspect ratios); got {sorted(per_level)} (one shared RPN head serves all)"
        )
    return AnchorGenerator(sizes=sizes, aspect_ratios=ratios)


def build_detector(
    cfg: CfgNode, num_classes: int, load_backbone_weights: bool = True
) -> FasterRCNN:
    """Faster R-CNN + FPN for `num_classes` object categories (the model adds background 0).

    `load_backbone_weights=False` skips reading MODEL.BACKBONE.WEIGHTS (when a full detector
    checkpoint is loaded next, e.g. --eval-only) but builds the same modules.
    """
    if num_classes < 1:
        raise ValueError(f"a detector needs at least one object category, got {num_classes}")
    name = cfg.MODEL.BACKBONE.NAME
    fpn, stages = BACKBONES.get(name)(cfg)
    num_levels = len(fpn.body.return_layers) + 1  # + LastLevelMaxPool's "pool"
    anchors = build_anchor_generator(cfg.MODEL.ANCHOR_GENERATOR, num_levels, name)
    weights = cfg.MODEL.BACKBONE.WEIGHTS
    if weights and load_backbone_weights:
        _load_backbone(fpn.body, name, weights)
    _freeze_stages(fpn.body, stages, cfg.MODEL.BACKBONE.TRAINABLE_LAYERS, bool(weights))
    rpn, roi = cfg.MODEL.RPN, cfg.MODEL.ROI_HEADS
    model = FasterRCNN(
        fpn,
        num_classes=num_classes + 1,
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=rpn.PRE_NMS_TOPK_TRAIN,
        rpn_pre_nms_top_n_test=rpn.PRE_NMS_TOPK_TEST,
        rpn_post_nms_top_n_train=rpn.POST_NMS_TOPK_TRAIN,
        rpn_post_nms_top_n_test=rpn.POST_NMS_TOPK_TEST,
        rpn_batch_size_per_image=rpn.BATCH_SIZE_PER_IMAGE,
        box_roi_pool=MultiScaleRoIAlign(
            featmap_names=list(fpn.body.return_layers.values()), output_size=7, sampling_ratio=2
        ),
        box_batch_size_per_image=roi.BATCH_SIZE_PER_IMAGE,
        box_score_thresh=roi.SCORE_THRESH_TEST,
        box_nms_thresh=roi.NMS_THRESH_TEST,
        box_detections_per_img=roi.DETECTIONS_PER_IMAGE,
    )
    model.transform = MultiScaleTransform(
        cfg.INPUT.MIN_SIZE_TRAIN,
        cfg.INPUT.MAX_SIZE_TRAIN,
        cfg.INPUT.MIN_SIZE_TEST,
        cfg.INPUT.MAX_SIZE_TEST,
    )
    # Channels-last convolutions: a training step of the toy config is about 5% faster on CPU
    # (docs/benchmarks.md); the same results up to float rounding.
    return model.to(memory_format=torch.channels_last)


def _load_backbone(body: nn.Module, name: str, path: str | os.PathLike) -> None:
    """Initialise the backbone body from `path` (see the module docstring for the formats)."""
    state = read_model_state(path)
    if not name.startswith("resnet"):
        for prefix in ("backbone.body.", "features."):
            found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            if found:
                load_model_state(body, found, source=str(path))
                return
        raise WeightsError(f"{path}: no {name} weights (keys under backbone.body. or features.)")
    weights = extract_resnet_state(state, str(path))
    have = {key.split(".")[0] for key in weights}
    present = [s for s in _RESNET_STAGES if s in have]
    if present != list(_RESNET_STAGES[: len(present)]) or not present:
        raise WeightsError(
            f"{path}: a ResNet trunk must hold its stages from conv1 on; it has {sorted(have)}"
        )
    target = nn.Module()
    for stage in present:
        target.add_module(stage, getattr(body, stage))
        if stage == "conv1":
            target.add_module("bn1", body.bn1)
    load_resnet_state(target, weights, str(path))
    absent = _RESNET_STAGES[len(present) :]
    if absent:
        logger.warning(
            "%s has no %s (a trunk cut after %s): those stages keep their random init",
            path,
            ", ".join(absent),
            present[-1],
        )


def _freeze_stages(
    body: nn.Module, stages: list[list[str]], trainable: int, pretrained: bool
) -> None:
    """Freeze all but the last `trainable` stages (named children of `body`): no gradients, and
    their BatchNorm2d layers become FrozenBatchNorm2d with the same statistics."""
    if not 0 <= trainable <= len(stages):
        raise ConfigError(
            f"MODEL.BACKBONE.TRAINABLE_LAYERS must be in 0..{len(stages)}, got {trainable}"
        )
    if not pretrained:
        if trainable < len(stages):
            logger.warning(
                "MODEL.BACKBONE.TRAINABLE_LAYERS %d ignored: a randomly initialised backbone "
                "trains all %d stages",
                trainable,
                len(stages),
            )
        return
    for stage in stages[: len(stages) - trainable]:
        for name in stage:
            getattr(body, name).requires_grad_(False)
            _freeze_batchnorm(body, name)


def _freeze_batchnorm(parent: nn.Module, name: str) -> None:
    """Replace the child `name` of `parent`, or every BatchNorm2d inside it, by FrozenBatchNorm2d."""
    child = getattr(parent, name)
    if isinstance(child, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
        with torch.no_grad():
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key))
        setattr(parent, name, frozen)
        return
    for grandchild, _ in list(child.named_children()):
        _freeze_batchnorm(child, grandchild)
