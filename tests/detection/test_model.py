"""The detector built from config: heads, sizes, anchor/FPN checks, backbone inits and freezing."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from avdet.config import ConfigError, load_config
from avdet.detection.model import build_detector
from avdet.engine.checkpoint import CheckpointError
from avdet.models.av_model import AVModel
from avdet.models.weights import WeightsError

SMALL = [
    "MODEL.FPN.OUT_CHANNELS", "32",
    "INPUT.MIN_SIZE_TRAIN", "(64, 80)", "INPUT.MAX_SIZE_TRAIN", "120",
    "INPUT.MIN_SIZE_TEST", "72", "INPUT.MAX_SIZE_TEST", "120",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
]  # fmt: skip


def _cfg(*opts: str):
    return load_config(None, [*SMALL, *opts])


def test_trains_on_positives_and_negatives_and_predicts():
    torch.manual_seed(0)
    model = build_detector(_cfg(), num_classes=3)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # + background
    images = [torch.rand(3, 60, 80), torch.rand(3, 70, 90)]
    targets = [
        {"boxes": torch.tensor([[5.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.backbone.body.conv1.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and out[1]["boxes"].shape[1] == 4
    assert (out[0]["labels"] >= 1).all() and (out[0]["labels"] <= 3).all()


def test_scale_jitter_in_training_and_fixed_test_size():
    model = build_detector(_cfg(), num_classes=1)
    image = torch.rand(3, 60, 80)
    model.train()
    torch.manual_seed(0)
    short_sides = {min(model.transform([image])[0].image_sizes[0]) for _ in range(30)}
    assert short_sides == {64, 80}
    model.eval()
    assert model.transform([image])[0].image_sizes[0] == (72, 96)


def test_anchor_levels_must_match_the_fpn():
    with pytest.raises(ConfigError, match=r"SIZES has 3 tuples but the resnet18 FPN has 5 levels"):
        build_detector(_cfg("MODEL.ANCHOR_GENERATOR.SIZES", "((16,), (32,), (64,))"), 2)
    with pytest.raises(ConfigError, match="mobilenet_v3_large FPN has 3 levels"):
        build_detector(_cfg("MODEL.BACKBONE.NAME", "mobilenet_v3_large"), 2)
    model = build_detector(
        _cfg(
            "MODEL.BACKBONE.NAME", "mobilenet_v3_large",
            "MODEL.ANCHOR_GENERATOR.SIZES", "((16, 32), (64, 128), (128, 256))",
        ),
        2,
    )  # fmt: skip
    assert model.rpn.head.cls_logits.out_channels == 6  # 2 sizes x 3 aspect ratios
    with pytest.raises(ConfigError, match="same number of anchors"):
        build_detector(
            _cfg("MODEL.ANCHOR_GENERATOR.SIZES", "((16, 24), (32,), (64,), (128,), (256,))"), 2
        )


def test_torchvision_resnet_initialises_the_whole_body(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=5)
    source.bn1.running_mean.uniform_()
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    body = build_detector(_cfg("MODEL.BACKBONE.WEIGHTS", str(path)), 2).backbone.body
    for key, value in body.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key])


def test_stage1_trunk_loads_and_missing_layer4_stays_random(tmp_path, caplog):
    torch.manual_seed(0)
    av = AVModel(num_clusters=3)  # visual trunk up to layer3, as stage 1 trains it
    path = tmp_path / "av.pth"
    torch.save({"model": av.state_dict(), "iteration": 9}, path)
    with caplog.at_level(logging.WARNING, logger="avdet.detection.model"):
        model = build_detector(_cfg("MODEL.BACKBONE.WEIGHTS", str(path)), 2)
    body, trunk = model.backbone.body, av.visual.trunk
    for key, value in trunk.state_dict().items():  # every trunk tensor arrived
        torch.testing.assert_close(body.state_dict()[key], value)
    assert "av.pth has no layer4" in caplog.text and "random init" in caplog.text
    assert body.layer4[0].conv1.weight.std() > 0  # torchvision's random init


def test_detector_checkpoint_initialises_another_detector(tmp_path):
    torch.manual_seed(0)
    trained = build_detector(_cfg(), 4)
    path = tmp_path / "det.pth"
    torch.save({"model": trained.state_dict()}, path)
    body = build_detector(_cfg("MODEL.BACKBONE.WEIGHTS", str(path)), 2).backbone.body
    torch.testing.assert_close(
        body.layer4[1].conv2.weight, trained.backbone.body.layer4[1].conv2.weight
    )


def test_trainable_layers_freeze_stages_and_their_statistics(tmp_path, caplog):
    source = torchvision.models.resnet18()
    source.layer1[0].bn1.running_var.fill_(4.0)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    cfg = _cfg("MODEL.BACKBONE.WEIGHTS", str(path), "MODEL.BACKBONE.TRAINABLE_LAYERS", "3")
    body = build_detector(cfg, 2).backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d) and isinstance(
        body.layer1[0].bn1, FrozenBatchNorm2d
    )
    assert torch.all(body.layer1[0].bn1.running_var == 4.0)
    assert not body.conv1.weight.requires_grad and not body.layer1[1].conv2.weight.requires_grad
    assert isinstance(body.layer2[0].bn1, torch.nn.BatchNorm2d)
    assert body.layer2[0].conv1.weight.requires_grad and body.layer4[0].bn1.weight.requires_grad
    with caplog.at_level(logging.WARNING, logger="avdet.detection.model"):
        random_body = build_detector(_cfg("MODEL.BACKBONE.TRAINABLE_LAYERS", "3"), 2).backbone.body
    assert "TRAINABLE_LAYERS 3 ignored" in caplog.text
    assert all(p.requires_grad for p in random_body.parameters())


def test_mobilenet_loads_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.mobilenet_v3_large(num_classes=3)
    path = tmp_path / "mnv3.pth"
    torch.save(source.state_dict(), path)
    cfg = _cfg(
        "MODEL.BACKBONE.NAME", "mobilenet_v3_large", "MODEL.BACKBONE.WEIGHTS", str(path),
        "MODEL.ANCHOR_GENERATOR.SIZES", "((16,), (32,), (64,))",
    )  # fmt: skip
    body = build_detector(cfg, 2).backbone.body
    torch.testing.assert_close(body["16"][0].weight, source.features[16][0].weight)


def test_bad_backbone_weights_name_the_file(tmp_path):
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="other.pth: no ResNet weights found"):
        build_detector(_cfg("MODEL.BACKBONE.WEIGHTS", str(tmp_path / "other.pth")), 2)
    with pytest.raises(CheckpointError, match="nope.pth: checkpoint file not found"):
        build_detector(_cfg("MODEL.BACKBONE.WEIGHTS", str(tmp_path / "nope.pth")), 2)
    # not read at all when a full detector checkpoint is loaded next (--eval-only)
    build_detector(_cfg("MODEL.BACKBONE.WEIGHTS", str(tmp_path / "nope.pth")), 2, False)
