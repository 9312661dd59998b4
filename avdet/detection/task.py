"""TASK "detector": train torchvision Faster R-CNN + FPN on any COCO JSON, then evaluate it.

    python tools/train_net.py --config-file configs/toy/detector.yaml \\
        DATASETS.TRAIN_JSON pseudo.json DATASETS.TEST_JSON test.json DATASETS.IMAGE_DIR frames/

The classes are the training JSON's categories (clusters for pseudo-labels, real classes for the
supervised baseline). Training goes through the shared engine (checkpoints, --resume, DDP, AMP,
metrics.json); every torchvision loss term is logged and their sum minimised. With
DATASETS.TEST_JSON, the detector is evaluated every TEST.EVAL_PERIOD iterations and at the end,
writing OUTPUT_DIR/inference/coco_instances_results.json and the COCO report there.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avdet.config import CfgNode, ConfigError
from avdet.data.coco import CocoFormatError, load_coco
from avdet.detection.dataset import CategoryMap, CocoDetectionDataset, collate_fn
from avdet.detection.inference import evaluate_detector
from avdet.detection.model import build_detector
from avdet.engine import comm
from avdet.engine.checkpoint import Checkpointer, CheckpointError, load_weights
from avdet.engine.tasks import register_task
from avdet.engine.trainer import EvalHook, Trainer

logger = logging.getLogger(__name__)


def detector_loss(model: nn.Module, batch: tuple[list, list]) -> dict[str, torch.Tensor]:
    """torchvision's loss dict (loss_classifier, loss_box_reg, loss_objectness, loss_rpn_box_reg)."""
    images, targets = batch
    return model(images, targets)


class DetectorEvaluator:
    """eval_fn of the EvalHook: evaluates on the test set, keeps the last full metrics."""

    def __init__(
        self, cfg: CfgNode, model: nn.Module, dataset: CocoDetectionDataset, categories: CategoryMap
    ) -> None:
        self.model, self.dataset, self.categories = model, dataset, categories
        self.output_dir = Path(cfg.OUTPUT_DIR) / "inference"
        self.batch_size = cfg.TEST.IMS_PER_BATCH
        self.num_workers = cfg.DATALOADER.NUM_WORKERS
        self.last: dict[str, Any] = {}

    def __call__(self) -> dict[str, float]:
        self.last = evaluate_detector(
            self.model,
            self.dataset,
            self.output_dir,
            self.categories,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
        )
        return {f"bbox/{k}": v for k, v in self.last.items() if k in ("AP", "AP50", "AP75")}


def detector_categories(cfg: CfgNode) -> CategoryMap:
    """The detector's classes: the training JSON's categories (the test JSON's without one)."""
    source = cfg.DATASETS.TRAIN_JSON or cfg.DATASETS.TEST_JSON
    if not source:
        raise ConfigError(
            "set DATASETS.TRAIN_JSON (the detector's classes come from its categories)"
        )
    return CategoryMap(load_coco(source)["categories"])


def load_detector(cfg: CfgNode, categories: CategoryMap) -> nn.Module:
    """A trained detector: MODEL.WEIGHTS, else OUTPUT_DIR's last checkpoint; on cfg.DEVICE."""
    model = build_detector(cfg, len(categories), load_backbone_weights=False)
    path = cfg.MODEL.WEIGHTS or Checkpointer(cfg.OUTPUT_DIR).get_checkpoint_file()
    if not path:
        raise CheckpointError(
            f"no detector weights: set MODEL.WEIGHTS or train into {cfg.OUTPUT_DIR} first"
        )
    load_weights(model, path)
    logger.info("detector weights loaded from %s", path)
    return model.to(comm.get_device(cfg.DEVICE))


def _dataset(cfg: CfgNode, json_path: str, train: bool) -> CocoDetectionDataset:
    return CocoDetectionDataset(
        json_path,
        cfg.DATASETS.IMAGE_DIR,
        train=train,
        keep_negatives=cfg.PSEUDO.KEEP_NEGATIVES if train else True,
    )


@register_task("detector")
def run(cfg: CfgNode, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or with --eval-only evaluate) the detector; returns the test metrics when evaluated.

    Also returned: `train_images` and `train_negatives` (images kept without boxes).
    """
    if getattr(args, "eval_only", False):
        if not cfg.DATASETS.TEST_JSON:
            raise ConfigError("--eval-only needs DATASETS.TEST_JSON (the images to evaluate on)")
        categories = detector_categories(cfg)
        model = load_detector(cfg, categories)
        evaluator = DetectorEvaluator(
            cfg, model, _dataset(cfg, cfg.DATASETS.TEST_JSON, False), categories
        )
        evaluator()
        return evaluator.last
    if not cfg.DATASETS.TRAIN_JSON:
        raise ConfigError(
            "DATASETS.TRAIN_JSON is empty: give a COCO JSON to train on (e.g. the pseudo-labels "
            "of tools/make_pseudo_labels.py) and DATASETS.IMAGE_DIR, the folder of its file_names"
        )
    train_set = _dataset(cfg, cfg.DATASETS.TRAIN_JSON, True)
    if not train_set.coco["annotations"]:
        raise CocoFormatError(
            f"{cfg.DATASETS.TRAIN_JSON}: has no annotations, so there is nothing to train on "
            "(did stage 2 find no pseudo-box on any frame?)"
        )
    model = build_detector(cfg, len(train_set.categories))
    hooks: list[EvalHook] = []
    evaluator = None
    if cfg.DATASETS.TEST_JSON:
        test_set = _dataset(cfg, cfg.DATASETS.TEST_JSON, False)
        evaluator = DetectorEvaluator(cfg, model, test_set, train_set.categories)
        hooks.append(EvalHook(cfg.TEST.EVAL_PERIOD, evaluator))
    logger.info(
        "detector: %d training images (%d negatives), %d classes %s",
        len(train_set), train_set.num_negatives, len(train_set.categories),
        train_set.categories.names[:10],
    )  # fmt: skip
    trainer = Trainer(cfg, model, train_set, detector_loss, collate_fn=collate_fn, hooks=hooks)
    trainer.train(resume=getattr(args, "resume", False), stop_at=getattr(args, "stop_at", None))
    metrics = dict(evaluator.last) if evaluator else {}
    return {**metrics, "train_images": len(train_set), "train_negatives": train_set.num_negatives}
