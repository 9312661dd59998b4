"""The distill task end to end on a tiny toy set, its crops and labelled folders, and compression.

The full toy config (teacher, student, controls; minutes) is `pytest -m slow tests/distill`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avdet.config import load_config
from avdet.data.toy import make_toy_dataset
from avdet.distill.compress import (
    calibrate,
    compress_teacher,
    magnitude_prune,
    make_pruning_permanent,
    quantization_ready,
    sparsity,
    to_int8,
)
from avdet.distill.crops import ObjectCropDataset, crop_square, labelled_folder
from avdet.distill.models import build_classifier
from avdet.distill.patches import SourceImageError, resolve_image_path
from avdet.distill.task import RESULTS_FILE, STUDENT_FILE, control_images, run
from avdet.engine.tasks import get_task
from avdet.models.av_model import build_av_model

REPO = Path(__file__).resolve().parents[2]
K = 3  # toy classes (tiny preset: 5 clips per class)


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory) -> Path:
    return make_toy_dataset(tmp_path_factory.mktemp("toy"), preset="tiny", num_classes=K, workers=1)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A 160x120 picture: coloured shapes on a gradient (the source image of the tests)."""
    y, x = np.mgrid[0:120, 0:160]
    rgb = np.stack([x * 255 // 160, y * 255 // 120, np.full_like(x, 90)], -1).astype(np.uint8)
    cv2.circle(rgb, (50, 60), 30, (220, 40, 40), -1)
    cv2.rectangle(rgb, (95, 20), (150, 70), (40, 200, 80), -1)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _cfg(toy_root: Path, output: Path, photo: Path, *extra: str):
    return load_config(
        None,
        [
            "TASK", "distill", "OUTPUT_DIR", str(output), "DEVICE", "cpu", "SEED", "3",
            "DATASETS.TOY.ROOT", str(toy_root), "DATASETS.TOY.PRESET", "tiny",
            "DATASETS.TOY.NUM_CLASSES", str(K), "DATALOADER.PREPARE_WORKERS", "1",
            "DATALOADER.NUM_WORKERS", "0",
            "DISTILL.NUM_CLASSES", str(K), "DISTILL.SOURCE_IMAGE", str(photo),
            "DISTILL.NUM_PATCHES", "32", "DISTILL.PATCH_SIZE", "32",
            "DISTILL.TEACHER.ARCH", "wrn_16_2",
            "DISTILL.MIXUP_ALPHA", "1.0",
            "SOLVER.OPTIMIZER", "adamw", "SOLVER.BASE_LR", "0.001", "SOLVER.MAX_ITER", "2",
            "SOLVER.IMS_PER_BATCH", "8", "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "100",
            *extra,
        ],
    )  # fmt: skip


def test_crop_square_cuts_the_box_with_context():
    rgb = np.zeros((100, 120, 3), np.uint8)
    rgb[20:40, 30:70] = (255, 0, 0)  # a 40x20 red box at x=30, y=20
    crop = crop_square(rgb, (30, 20, 40, 20), size=32, context=0.0)
    assert crop.shape == (32, 32, 3)
    # Side = max(w, h) = 40 around the centre (50, 30): red rows 10..30 of 40 -> 8..24 of 32.
    red = crop[..., 0] > 128
    assert red[:, 2:30].all(axis=1)[9:23].all() and not red[:6].any() and not red[27:].any()
    # Context zooms out: the box fills less of the crop; outside the frame is border-replicated.
    wide = crop_square(rgb, (30, 20, 40, 20), size=32, context=1.0)
    assert (wide[..., 0] > 128).mean() < red.mean()
    edge = crop_square(rgb, (0, 0, 10, 10), size=16, context=1.0)
    assert edge.shape == (16, 16, 3)


def test_object_crops_of_the_toy_set(toy_root):
    cfg = load_config(
        None,
        ["DATASETS.TOY.ROOT", str(toy_root), "DATASETS.TOY.PRESET", "tiny",
         "DATASETS.TOY.NUM_CLASSES", str(K), "DATALOADER.PREPARE_WORKERS", "1"],
    )  # fmt: skip
    from avdet.data.sources import ensure_prepared

    source = ensure_prepared(cfg)
    annotations = source.annotation("instances_train.json")
    coco = json.loads(annotations.read_text())
    dataset = ObjectCropDataset(annotations, source.prepared_dir, 24)
    assert len(dataset) == len(coco["annotations"])
    assert dataset.class_names == [
        c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])
    ]
    ids = sorted(c["id"] for c in coco["categories"])
    expected = sorted(ids.index(a["category_id"]) for a in coco["annotations"])
    assert sorted(dataset.labels.tolist()) == expected
    image, label = dataset[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and 0 <= label < K
    # Evaluation crops are fixed; training crops are augmented.
    assert torch.equal(dataset[1][0], dataset[1][0])
    train = ObjectCropDataset(annotations, source.prepared_dir, 24, train=True)
    assert any(not torch.equal(train[1][0], train[1][0]) for _ in range(5))


def test_labelled_image_folder(tmp_path):
    for name, colour in (("cat", (0, 0, 255)), ("dog", (0, 255, 0))):
        (tmp_path / name).mkdir()
        for i in range(2):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), np.full((40, 50, 3), colour, np.uint8))
    dataset = labelled_folder(tmp_path, 16)
    assert len(dataset) == 4 and dataset.classes == ["cat", "dog"]
    image, label = dataset[3]
    assert image.shape == (3, 16, 16) and label == 1
    with pytest.raises(FileNotFoundError, match="nowhere: labelled image folder not found"):
        labelled_folder(tmp_path / "nowhere", 16)


def test_control_images_match_the_source():
    image = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    controls = control_images(image, seed=0)
    noise, flat = controls["noise_control"], controls["flat_control"]
    assert noise.shape == flat.shape == (40, 60, 3)
    assert noise.std() > 60 and (flat == flat[0, 0]).all()
    np.testing.assert_allclose(flat[0, 0], image.float().mean(dim=(1, 2)).numpy(), atol=0.5)
    assert np.array_equal(control_images(image, seed=0)["noise_control"], noise)


def test_distill_task_end_to_end_on_tiny_data(toy_root, photo, tmp_path):
    cfg = _cfg(toy_root, tmp_path / "run", photo)
    assert get_task("distill") is run
    results = run(cfg, argparse.Namespace(resume=False, eval_only=False))
    written = json.loads((tmp_path / "run" / "inference" / RESULTS_FILE).read_text())
    for key in ("teacher_acc", "student_acc", "noise_control_acc", "flat_control_acc"):
        assert 0.0 <= written[key] <= 1.0 and written[key] == results[key]
    for stage in ("teacher", "student", "noise_control", "flat_control"):
        assert (tmp_path / "run" / stage / "model_final.pth").is_file()
        assert (tmp_path / "run" / stage / "metrics.json").is_file()
    for name in ("student", "noise_control", "flat_control"):
        assert cv2.imread(str(tmp_path / "run" / name / "patches.png")) is not None
    flat = cv2.imread(str(tmp_path / "run" / "controls" / "flat_control.png"))
    assert flat.shape == (120, 160, 3) and (flat == flat[0, 0]).all()
    # The exported student (torchvision names) initialises the AV visual tower.
    student_path = tmp_path / "run" / STUDENT_FILE
    student = torch.load(student_path, weights_only=True)
    av_cfg = load_config(None, ["MODEL.VISUAL.WEIGHTS", str(student_path)])
    trunk = build_av_model(av_cfg).visual.trunk.state_dict()
    torch.testing.assert_close(trunk["layer3.1.conv2.weight"], student["layer3.1.conv2.weight"])
    # --eval-only reloads teacher and student and gives the same accuracies.
    again = run(cfg, argparse.Namespace(resume=False, eval_only=True))
    assert again["teacher_acc"] == results["teacher_acc"]
    assert again["student_acc"] == results["student_acc"]


def test_pruning_reaches_the_sparsity_and_keeps_the_masks_while_training():
    torch.manual_seed(0)
    model = build_classifier("wrn_16_2", 4)
    magnitude_prune(model, 0.6)
    assert sparsity(model) == pytest.approx(0.6, abs=1e-3)
    assert hasattr(model.fc, "weight_mask")
    smallest = model.stem.weight_orig.abs().flatten().min()
    assert (
        model.stem.weight.flatten()[model.stem.weight_orig.abs().flatten() == smallest].eq(0).all()
    )
    make_pruning_permanent(model)
    assert not hasattr(model.fc, "weight_mask") and "fc.weight" in model.state_dict()
    assert sparsity(model) == pytest.approx(0.6, abs=1e-3)
    with pytest.raises(ValueError, match="pruning amount must be in"):
        magnitude_prune(model, 1.5)


def test_int8_quantisation_follows_the_float_model():
    torch.manual_seed(0)
    model = build_classifier("resnet18", 4).eval()
    images = torch.randn(16, 3, 32, 32)
    observed = quantization_ready(model, images[:2], qat=False)
    calibrate(observed, list(images), num_batches=2, batch_size=8)
    quantized = to_int8(observed)
    with torch.no_grad():
        reference, output = model(images), quantized(images)
    assert output.shape == (16, 4)
    assert (output - reference).abs().mean() < 0.2 * reference.abs().mean() + 1e-3
    assert any("quantized" in type(m).__module__ for m in quantized.modules())


def test_compress_teacher_reports_before_and_after():
    torch.manual_seed(0)
    teacher = build_classifier("wrn_16_2", 3).eval().requires_grad_(False)  # as in a Distiller
    test_set = [(torch.randn(3, 32, 32), i % 3) for i in range(12)]
    patches = [torch.randn(3, 32, 32) for _ in range(16)]
    tuned = []

    def distil(model, name):
        assert all(p.requires_grad for p in model.parameters())  # a trainable copy
        tuned.append(name)
        model(torch.stack(patches))  # as training would: QAT's observers see the patches
        return model

    results = compress_teacher(teacher, ["prune", "int8"], patches, test_set, distil, 0.5, 8)
    assert tuned == ["prune_0.5", "int8_qat"]
    for key in ("teacher_acc", "prune_acc_before_ft", "prune_acc", "int8_ptq_acc", "int8_acc"):
        assert 0.0 <= results[key] <= 1.0
    assert results["prune_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert results["int8_bytes"] < results["teacher_bytes"] / 2
    with pytest.raises(ValueError, match="unknown compression methods"):
        compress_teacher(teacher, ["int4"], patches, test_set, distil)


@pytest.mark.slow
def test_toy_config_student_beats_both_controls(tmp_path):
    """configs/distill/toy.yaml as shipped (minutes on 2 cores; the toy set is made if missing)."""
    cfg = load_config(REPO / "configs" / "distill" / "toy.yaml", ["OUTPUT_DIR", str(tmp_path)])
    try:
        resolve_image_path(cfg.DISTILL.SOURCE_IMAGE)
    except SourceImageError as exc:  # the bundled photograph needs scikit-image
        pytest.skip(str(exc))
    results = run(cfg, argparse.Namespace(resume=False, eval_only=False))
    assert results["teacher_acc"] > 0.8
    assert results["student_acc"] > results["noise_control_acc"] + 0.1
    assert results["student_acc"] > results["flat_control_acc"] + 0.1
    assert results["student_acc"] >= 0.7 * results["teacher_acc"]
