"""Classifiers for distillation: builders, strict loading, the teacher/student wrapper, and a
student's weights initialising the AV visual tower and the detector backbone."""

from __future__ import annotations

import logging

import pytest
import torch

from avdet.config import load_config
from avdet.detection.model import build_detector
from avdet.distill.models import (
    CLASSIFIERS,
    Distiller,
    accuracy,
    build_classifier,
    load_classifier,
)
from avdet.engine.checkpoint import CheckpointError
from avdet.models.av_model import build_av_model


def _trained_looking(model: torch.nn.Module) -> torch.nn.Module:
    """Perturb every tensor (BatchNorm statistics too) so a load is visible."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.1)
    return model


def _assert_trunk_equals(trunk: torch.nn.Module, student: torch.nn.Module) -> None:
    """Every tensor of `trunk` (torchvision names) equals the student's tensor of that name."""
    source = student.state_dict()
    own = trunk.state_dict()
    assert own, "empty trunk"
    missing = [k for k in own if k not in source]
    assert not missing, f"trunk tensors the student lacks: {missing}"
    for key, value in own.items():
        torch.testing.assert_close(value, source[key], msg=key)


@pytest.mark.parametrize("arch", ["resnet18", "wrn_16_4"])
def test_builders_give_logits_of_the_configured_classes(arch):
    model = build_classifier(arch, 7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert "wrn_40_4" in CLASSIFIERS.names() and "resnet50" in CLASSIFIERS.names()
    with pytest.raises(KeyError, match="unknown classifier 'resnet81'"):
        build_classifier("resnet81", 7)


def test_wide_resnets_have_the_papers_sizes():
    # WRN-16-4: 2.7M parameters, WRN-40-4: 8.9M (Zagoruyko & Komodakis, table 1, CIFAR-10).
    sizes = {
        arch: sum(p.numel() for p in build_classifier(arch, 10).parameters()) / 1e6
        for arch in ("wrn_16_4", "wrn_40_4")
    }
    assert sizes["wrn_16_4"] == pytest.approx(2.75, abs=0.05)
    assert sizes["wrn_40_4"] == pytest.approx(8.95, abs=0.05)


def test_student_initialises_the_av_visual_tower(tmp_path):
    torch.manual_seed(0)
    student = _trained_looking(build_classifier("resnet18", 8))
    path = tmp_path / "student_final.pth"
    torch.save(student.state_dict(), path)
    cfg = load_config(
        None, ["MODEL.VISUAL.WEIGHTS", str(path), "MODEL.VISUAL.LAST_STAGE", "layer4"]
    )
    _assert_trunk_equals(build_av_model(cfg).visual.trunk, student)


def test_student_initialises_the_detector_backbone(tmp_path, caplog):
    torch.manual_seed(1)
    student = _trained_looking(build_classifier("resnet18", 8))
    path = tmp_path / "student_final.pth"
    torch.save(student.state_dict(), path)
    cfg = load_config(None, ["MODEL.BACKBONE.WEIGHTS", str(path)])
    with caplog.at_level(logging.WARNING):
        detector = build_detector(cfg, num_classes=3)
    assert "random init" not in caplog.text  # every stage, conv1..layer4, was loaded
    body = detector.backbone.body
    _assert_trunk_equals(body, student)
    assert set(body.state_dict()) == {k for k in student.state_dict() if not k.startswith("fc.")}


def test_distiller_checkpoint_gives_the_student_not_the_teacher(tmp_path):
    torch.manual_seed(2)
    teacher = _trained_looking(build_classifier("resnet18", 8))
    student = _trained_looking(build_classifier("resnet18", 8))
    path = tmp_path / "model_final.pth"
    torch.save({"model": Distiller(teacher, student).state_dict(), "iteration": 9}, path)
    cfg = load_config(
        None, ["MODEL.VISUAL.WEIGHTS", str(path), "MODEL.VISUAL.LAST_STAGE", "layer4"]
    )
    _assert_trunk_equals(build_av_model(cfg).visual.trunk, student)


def test_distiller_keeps_the_teacher_frozen_in_eval_mode():
    teacher, student = build_classifier("wrn_16_2", 4), build_classifier("wrn_16_2", 4)
    distiller = Distiller(teacher, student).train()
    assert not distiller.teacher.training and distiller.student.training
    images = torch.randn(4, 3, 32, 32)
    before = teacher.bn.running_mean.clone()
    student_logits, teacher_logits = distiller(images)
    assert not teacher_logits.requires_grad and student_logits.requires_grad
    torch.testing.assert_close(teacher.bn.running_mean, before)
    student_logits.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())


def test_distiller_can_keep_the_students_batchnorm_statistics():
    teacher, student = build_classifier("wrn_16_2", 4), build_classifier("wrn_16_2", 4)
    distiller = Distiller(teacher, student, freeze_student_bn=True).train()
    assert student.training and not student.bn.training
    before = student.bn.running_mean.clone()
    student_logits, _ = distiller(torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(student.bn.running_mean, before)
    student_logits.sum().backward()
    assert student.stem.weight.grad is not None


def test_load_classifier_is_strict_and_names_the_file(tmp_path):
    model = _trained_looking(build_classifier("wrn_16_2", 5))
    path = tmp_path / "teacher.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = load_classifier("wrn_16_2", 5, path).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model.eval()(images))
    with pytest.raises(CheckpointError, match=r"teacher\.pth.*shape mismatches.*fc\.weight"):
        load_classifier("wrn_16_2", 6, path)
    with pytest.raises(CheckpointError, match=r"teacher\.pth.*missing"):
        load_classifier("resnet18", 5, path)


def test_accuracy_counts_correct_predictions():
    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    labels = [0, 1, 2, 2, 1]
    predicted = [0, 1, 1, 2, 0]  # 3 of 5 right
    data = [(torch.full((3, 2, 2), float(p)), y) for p, y in zip(predicted, labels, strict=True)]
    assert accuracy(Fixed(), data, batch_size=2) == pytest.approx(0.6)
