"""The "distill" task: a teacher, a student distilled from ONE image, and two controls.

    python tools/train_net.py --config-file configs/distill/toy.yaml [--resume] [--eval-only]

Stages, each an engine run in its own folder of OUTPUT_DIR (checkpoints, metrics.json, --resume):
1. `teacher/`: trained on the labelled train set (the toy set's object crops) unless
   DISTILL.TEACHER.WEIGHTS names local weights.
2. `student/`: a fresh DISTILL.STUDENT.ARCH distilled on DISTILL.NUM_PATCHES patches of
   DISTILL.SOURCE_IMAGE only (KL at DISTILL.TEMPERATURE, DISTILL.SIGNAL, CutMix/MixUp).
3. `noise_control/`, `flat_control/`: the same recipe and budget from a uniform-noise image and
   from a flat image of the source's mean colour (both of the source's size, in `controls/`).
4. Optional compression of the teacher with the same patches (`compress.py`).
Results go to OUTPUT_DIR/inference/distill_results.json; the student's weights, with
torchvision names, to OUTPUT_DIR/student_final.pth (for MODEL.VISUAL.WEIGHTS or
MODEL.BACKBONE.WEIGHTS).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from avdet.config import CfgNode
from avdet.data.sources import ensure_prepared, resolve_source
from avdet.distill.compress import compress_teacher
from avdet.distill.crops import ObjectCropDataset, labelled_folder
from avdet.distill.losses import distillation_loss, mix_images, teacher_targets
from avdet.distill.models import Distiller, accuracy, build_classifier, load_classifier
from avdet.distill.patches import (
    PatchDataset,
    load_source_image,
    resolve_image_path,
    save_contact_sheet,
)
from avdet.engine import comm
from avdet.engine.tasks import register_task
from avdet.engine.trainer import EvalHook, Trainer
from avdet.utils.io import atomic_open, atomic_write_json
from avdet.utils.seed import derive_seed
from avdet.utils.visualize import save_png

logger = logging.getLogger(__name__)

RESULTS_FILE = "distill_results.json"
STUDENT_FILE = "student_final.pth"
CONTROLS = ("noise_control", "flat_control")
_NOISE_SEED_KEY = 0x0015E
_SHEET_PATCHES = 64


def stage_config(cfg: CfgNode, name: str, max_iter: int = 0) -> CfgNode:
    """The config of one stage: OUTPUT_DIR/<name>, no MODEL.WEIGHTS, optionally its own MAX_ITER."""
    stage = cfg.clone().defrost()
    stage.OUTPUT_DIR = str(Path(cfg.OUTPUT_DIR) / name)
    stage.MODEL.WEIGHTS = ""
    if max_iter > 0:
        stage.SOLVER.MAX_ITER = max_iter
    return stage.freeze()


def build_labelled_sets(cfg: CfgNode) -> tuple[Dataset | None, Dataset]:
    """(teacher training set or None, test set) at DISTILL.PATCH_SIZE.

    DATASETS.IMAGE_DIR set: a local labelled folder is the test set (CIFAR pickles or
    ImageFolder) and there is no training set (DISTILL.TEACHER.WEIGHTS is then required).
    Otherwise the object crops of the toy (or any COCO-annotated) set: DATASETS.TRAIN[0] and
    DATASETS.TEST[0] splits of `instances_<split>.json`, generated and prepared on first use.
    """
    size = cfg.DISTILL.PATCH_SIZE
    if cfg.DATASETS.IMAGE_DIR:
        return None, labelled_folder(cfg.DATASETS.IMAGE_DIR, size)
    if comm.is_main_process():
        ensure_prepared(cfg)
    comm.synchronize()
    source = resolve_source(cfg)
    sets = []
    for split, train in ((cfg.DATASETS.TRAIN[0], True), (cfg.DATASETS.TEST[0], False)):
        name = f"instances_{split}.json"
        path = source.annotation(name)
        if path is None:
            raise FileNotFoundError(f"{source.annotation_dir}: no {name} for the object crops")
        sets.append(ObjectCropDataset(path, source.prepared_dir, size, train=train))
    for dataset in sets:
        if dataset.num_classes != cfg.DISTILL.NUM_CLASSES:
            raise ValueError(
                f"the labelled set has {dataset.num_classes} classes but DISTILL.NUM_CLASSES is "
                f"{cfg.DISTILL.NUM_CLASSES}"
            )
    return sets[0], sets[1]


class TestAccuracy:
    """Accuracy of `model` on the test set, remembered in `.value` (an EvalHook's eval_fn)."""

    def __init__(self, model: nn.Module, test_set: Dataset, cfg: CfgNode) -> None:
        self.model, self.test_set = model, test_set
        self.batch_size = cfg.TEST.IMS_PER_BATCH
        self.device = comm.get_device(cfg.DEVICE)
        self.value = float("nan")

    def __call__(self) -> dict[str, float]:
        self.value = accuracy(self.model, self.test_set, self.batch_size, self.device)
        return {"test_accuracy": self.value}


def _cross_entropy(model: nn.Module, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    images, labels = batch
    logits = model(images)
    return {
        "loss_ce": F.cross_entropy(logits, labels),
        "train_accuracy": (logits.argmax(-1) == labels).float().mean(),
    }


class DistillationObjective:
    """loss_fn of a distillation run: mix the patches [B, 3, S, S], KL(teacher || student) at T."""

    def __init__(self, cfg: CfgNode) -> None:
        d = cfg.DISTILL
        self.temperature, self.signal, self.topk = d.TEMPERATURE, d.SIGNAL, d.TOPK
        self.cutmix, self.mixup = d.CUTMIX_ALPHA, d.MIXUP_ALPHA

    def __call__(self, model: nn.Module, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        student_logits, teacher_logits = model(mix_images(patches, self.cutmix, self.mixup))
        targets = teacher_targets(teacher_logits.float(), self.temperature, self.signal, self.topk)
        agree = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float().mean()
        return {
            "loss_kd": distillation_loss(student_logits, targets, self.temperature),
            "teacher_agreement": agree,
        }


def train_teacher(
    cfg: CfgNode, train_set: Dataset, test_set: Dataset, resume: bool
) -> tuple[nn.Module, float]:
    """Train DISTILL.TEACHER.ARCH on the labelled set in OUTPUT_DIR/teacher; (model, test acc)."""
    stage = stage_config(cfg, "teacher", cfg.DISTILL.TEACHER.MAX_ITER)
    model = build_classifier(cfg.DISTILL.TEACHER.ARCH, cfg.DISTILL.NUM_CLASSES)
    evaluate = TestAccuracy(model, test_set, stage)
    trainer = Trainer(
        stage, model, train_set, _cross_entropy, hooks=[EvalHook(cfg.TEST.EVAL_PERIOD, evaluate)]
    )
    trainer.train(resume=resume)
    return trainer.model.eval(), evaluate.value


def distil(
    cfg: CfgNode,
    teacher: nn.Module,
    student: nn.Module,
    patches: Dataset,
    name: str,
    test_set: Dataset,
    resume: bool,
    freeze_bn: bool = False,
) -> tuple[nn.Module, float]:
    """Distil `teacher` into `student` on `patches` in OUTPUT_DIR/<name>; (student, test acc).

    `freeze_bn`: keep the student's BatchNorm statistics (a compressed copy of the teacher)."""
    stage = stage_config(cfg, name)
    distiller = Distiller(teacher, student, freeze_student_bn=freeze_bn)
    evaluate = TestAccuracy(distiller.student, test_set, stage)
    trainer = Trainer(
        stage,
        distiller,
        patches,
        DistillationObjective(cfg),
        hooks=[EvalHook(cfg.TEST.EVAL_PERIOD, evaluate)],
    )
    trainer.train(resume=resume)
    return distiller.student.eval(), evaluate.value


def control_images(image: torch.Tensor, seed: int) -> dict[str, np.ndarray]:
    """RGB uint8 [H, W, 3] control sources of the size of `image` [3, H, W]: uniform noise
    (seeded) and a flat image of the source's mean colour."""
    height, width = image.shape[-2:]
    rng = np.random.default_rng(derive_seed(_NOISE_SEED_KEY, seed))
    mean = image.float().mean(dim=(1, 2)).round().to(torch.uint8).numpy()
    return {
        "noise_control": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "flat_control": np.broadcast_to(mean, (height, width, 3)).copy(),
    }


def _patch_sources(cfg: CfgNode) -> dict[str, Path]:
    """Run name -> source image: the student's, then (DISTILL.CONTROLS) the two controls."""
    source = resolve_image_path(cfg.DISTILL.SOURCE_IMAGE)
    sources = {"student": source}
    if not cfg.DISTILL.CONTROLS:
        return sources
    folder = Path(cfg.OUTPUT_DIR) / "controls"
    if comm.is_main_process():
        image = load_source_image(source, cfg.DISTILL.PATCH_SIZE)
        for name, rgb in control_images(image, cfg.SEED).items():
            save_png(folder / f"{name}.png", rgb)
    comm.synchronize()
    sources.update({name: folder / f"{name}.png" for name in CONTROLS})
    return sources


def _teacher(
    cfg: CfgNode, train_set: Dataset | None, test_set: Dataset, resume: bool, eval_only: bool
) -> tuple[nn.Module, float]:
    """The teacher from DISTILL.TEACHER.WEIGHTS (with --eval-only, else OUTPUT_DIR/teacher's
    final checkpoint), or trained here; (model in eval mode on cfg.DEVICE, test accuracy)."""
    d = cfg.DISTILL
    weights = d.TEACHER.WEIGHTS
    if not weights and eval_only:
        weights = str(Path(cfg.OUTPUT_DIR) / "teacher" / "model_final.pth")
    if weights:
        teacher = load_classifier(d.TEACHER.ARCH, d.NUM_CLASSES, weights)
        teacher = teacher.to(comm.get_device(cfg.DEVICE)).eval()
        return teacher, TestAccuracy(teacher, test_set, cfg)()["test_accuracy"]
    if train_set is None:
        raise ValueError(
            "DISTILL.TEACHER.WEIGHTS is empty and there is no labelled training set "
            f"(DATASETS.IMAGE_DIR={cfg.DATASETS.IMAGE_DIR!r} is evaluation only)"
        )
    return train_teacher(cfg, train_set, test_set, resume)


def _save_student(student: nn.Module, path: Path) -> None:
    state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
    with atomic_open(path, "wb") as handle:
        torch.save(state, handle)


def _distil_students(
    cfg: CfgNode, teacher: nn.Module, test_set: Dataset, resume: bool
) -> tuple[dict[str, float], dict[str, float]]:
    """The student and (DISTILL.CONTROLS) the controls: ({name}_acc, {name}_s) dicts."""
    d = cfg.DISTILL
    output = Path(cfg.OUTPUT_DIR)
    accuracies, timings = {}, {}
    for name, source in _patch_sources(cfg).items():
        start = time.perf_counter()
        patches = PatchDataset(source, d.NUM_PATCHES, d.PATCH_SIZE, cfg.SEED)
        if comm.is_main_process():
            sheet = [patches.raw(i) for i in range(min(_SHEET_PATCHES, len(patches)))]
            save_contact_sheet(output / name / "patches.png", sheet)
        student = build_classifier(d.STUDENT.ARCH, d.NUM_CLASSES)
        student, accuracies[f"{name}_acc"] = distil(
            cfg, teacher, student, patches, name, test_set, resume
        )
        timings[f"{name}_s"] = time.perf_counter() - start
        if name == "student" and comm.is_main_process():
            _save_student(student, output / STUDENT_FILE)
    return accuracies, timings


def _compress(
    cfg: CfgNode, teacher: nn.Module, methods: list[str], test_set: Dataset, resume: bool
) -> dict[str, float]:
    """compress_teacher with the student's patches and recipe, in OUTPUT_DIR/compress/<method>."""
    d = cfg.DISTILL
    patches = PatchDataset(d.SOURCE_IMAGE, d.NUM_PATCHES, d.PATCH_SIZE, cfg.SEED)

    def distil_compressed(model: nn.Module, name: str) -> nn.Module:
        return distil(
            cfg, teacher, model, patches, f"compress/{name}", test_set, resume, freeze_bn=True
        )[0]

    return compress_teacher(
        teacher,
        methods,
        patches,
        test_set,
        distil_compressed,
        prune_amount=d.PRUNE_AMOUNT,
        batch_size=cfg.TEST.IMS_PER_BATCH,
        device=comm.get_device(cfg.DEVICE),
    )


@register_task("distill")
def run(cfg: CfgNode, args: argparse.Namespace) -> dict[str, Any]:
    """Teacher, single-image student, controls (and compression); returns the results dict."""
    resume = bool(getattr(args, "resume", False))
    eval_only = bool(getattr(args, "eval_only", False))
    d = cfg.DISTILL
    output = Path(cfg.OUTPUT_DIR)
    start = time.perf_counter()
    train_set, test_set = build_labelled_sets(cfg)
    timings = {"data_s": time.perf_counter() - start}
    start = time.perf_counter()
    teacher, teacher_acc = _teacher(cfg, train_set, test_set, resume, eval_only)
    timings["teacher_s"] = time.perf_counter() - start
    results: dict[str, Any] = {"teacher_acc": teacher_acc}

    if eval_only:
        path = cfg.MODEL.WEIGHTS or output / STUDENT_FILE
        student = load_classifier(d.STUDENT.ARCH, d.NUM_CLASSES, path)
        student = student.to(comm.get_device(cfg.DEVICE))
        results["student_acc"] = TestAccuracy(student, test_set, cfg)()["test_accuracy"]
        results["student_weights"] = str(path)
    else:
        accuracies, stage_timings = _distil_students(cfg, teacher, test_set, resume)
        results.update(accuracies)
        timings.update(stage_timings)
        methods = list(d.COMPRESS)
        if methods:
            start = time.perf_counter()
            results["compression"] = _compress(cfg, teacher, methods, test_set, resume)
            timings["compression_s"] = time.perf_counter() - start

    results.update(
        student_over_teacher=results["student_acc"] / max(teacher_acc, 1e-12),
        source_image=str(resolve_image_path(d.SOURCE_IMAGE)),
        signal=d.SIGNAL,
        temperature=d.TEMPERATURE,
        num_patches=d.NUM_PATCHES,
        patch_size=d.PATCH_SIZE,
        teacher_arch=d.TEACHER.ARCH,
        student_arch=d.STUDENT.ARCH,
        num_test=len(test_set),
        iterations=cfg.SOLVER.MAX_ITER,
        timings=timings,
    )
    if comm.is_main_process():
        atomic_write_json(output / "inference" / RESULTS_FILE, results, indent=2)
        logger.info("distillation results: %s", results)
    return results
