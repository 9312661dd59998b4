"""Loading ResNet weights across avdet's models: torchvision naming behind any known prefix."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from avdet.config import load_config
from avdet.engine.checkpoint import CheckpointError
from avdet.models.av_model import AVModel, build_av_model
from avdet.models.weights import WeightsError, load_resnet_weights


def test_torchvision_resnet_loads_into_the_visual_tower(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "student.pth"
    torch.save(source.state_dict(), path)
    cfg = load_config(None, ["MODEL.VISUAL.WEIGHTS", str(path)])
    model = build_av_model(cfg)
    torch.testing.assert_close(
        model.visual.trunk.layer3[1].conv2.weight, source.layer3[1].conv2.weight
    )
    torch.testing.assert_close(model.visual.trunk.bn1.running_mean, source.bn1.running_mean)


def test_av_checkpoint_visual_trunk_loads_into_a_plain_resnet(tmp_path):
    av = AVModel(num_clusters=3)
    path = tmp_path / "av.pth"
    torch.save({"model": av.state_dict(), "iteration": 5}, path)
    target = torchvision.models.resnet18()
    named = torch.nn.Module()
    for n in ("conv1", "bn1", "layer1", "layer2", "layer3"):
        named.add_module(n, getattr(target, n))
    load_resnet_weights(named, path)
    torch.testing.assert_close(
        target.layer2[0].conv1.weight, av.visual.trunk.layer2[0].conv1.weight
    )


def test_missing_stage_is_a_clear_error(tmp_path):
    av = AVModel(visual_last_stage="layer2", num_clusters=3)
    path = tmp_path / "short.pth"
    torch.save({"model": av.state_dict()}, path)
    with pytest.raises(
        WeightsError, match=r"short\.pth: cannot initialise .*missing keys \['layer3"
    ):
        load_resnet_weights(AVModel(num_clusters=3).visual.trunk, path)


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth: checkpoint file not found"):
        load_resnet_weights(torchvision.models.resnet18(), tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: cannot load with weights_only"):
        load_resnet_weights(torchvision.models.resnet18(), junk)
    edited = tmp_path / "edited.pth"
    torch.save(torchvision.models.resnet18().state_dict(), edited)
    record = {"file": "edited.pth", "sha256": "0" * 64, "size": edited.stat().st_size}
    (tmp_path / "edited.pth.sha256").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="edited.pth: sha256"):
        load_resnet_weights(torchvision.models.resnet18(), edited)
    other = tmp_path / "other.pth"
    torch.save({"linear.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(WeightsError, match="other.pth: no ResNet weights found"):
        load_resnet_weights(torchvision.models.resnet18(), other)
