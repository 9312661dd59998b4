"""Run a trained detector over a COCO dataset: COCO results JSON and, with ground truth, COCO metrics.

Results use the training JSON's category ids (the detector's labels 1..C mapped back through its
CategoryMap) and xywh boxes in original image pixels, so the file opens in pycocotools,
detectron2 or mmdet unchanged. With several processes each one runs a share of the images and
the results are gathered; the main process writes the files.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from avdet.detection.dataset import CategoryMap, CocoDetectionDataset, collate_fn
from avdet.engine import comm
from avdet.evaluation.coco_eval import evaluate_coco, write_coco_report
from avdet.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

RESULTS_FILE = "coco_instances_results.json"
REPORT_PREFIX = "detector"


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    """[N, 4] xyxy boxes -> xywh rows (Python floats, on the CPU)."""
    boxes = boxes.detach().cpu().clone()
    boxes[:, 2:] -= boxes[:, :2]
    return boxes.tolist()


def _result(image_id: int, category_id: int, box: list[float], score: float) -> dict:
    """One COCO result entry, rounded as the results files store them."""
    return {
        "image_id": image_id,
        "category_id": category_id,
        "bbox": [round(v, 2) for v in box],
        "score": round(score, 5),
    }


@torch.no_grad()
def run_detector_inference(
    model: nn.Module,
    dataset: CocoDetectionDataset,
    output_dir: str | os.PathLike | None = None,
    categories: CategoryMap | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    progress: bool = True,
) -> list[dict]:
    """COCO results {image_id, category_id, bbox [x, y, w, h], score} for every image of `dataset`.

    `categories`: the detector's label mapping (the training set's; default: `dataset`'s own).
    With `output_dir`, the main process writes `output_dir/coco_instances_results.json`
    atomically. Every process returns all results, sorted by image id, then by falling score.
    """
    categories = categories or dataset.categories
    model = getattr(model, "module", model)  # DistributedDataParallel -> the model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    share = Subset(dataset, range(comm.get_rank(), len(dataset), comm.get_world_size()))
    loader = DataLoader(
        share, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn
    )
    results = []
    for images, targets in tqdm(
        loader, desc="detector inference", disable=not progress or not comm.is_main_process()
    ):
        outputs = model([image.to(device) for image in images])
        for target, output in zip(targets, outputs, strict=True):
            results.extend(
                _result(target["image_id"], categories.category_id(label), box, score)
                for box, label, score in zip(
                    _xywh(output["boxes"]),
                    output["labels"].tolist(),
                    output["scores"].tolist(),
                    strict=True,
                )
            )
    model.train(was_training)
    results = [r for part in comm.all_gather_object(results) for r in part]
    results.sort(key=lambda r: (r["image_id"], -r["score"]))
    if output_dir is not None and comm.is_main_process():
        path = Path(output_dir) / RESULTS_FILE
        atomic_write_json(path, results)
        logger.info("%d detections on %d images written to %s", len(results), len(dataset), path)
    return results


@torch.no_grad()
def classify_boxes(
    model: nn.Module,
    dataset: CocoDetectionDataset,
    categories: CategoryMap,
    batch_size: int = 8,
) -> list[dict]:
    """The detector's class distribution for each given box of `dataset` (e.g. a labelled box).

    The ROI head classifies the box itself (no proposals, no NMS, no score threshold), and the
    probabilities of the detector's categories are renormalised without the background, so every
    box yields one entry per category, {image_id, category_id, bbox (the box), score}, scores
    summing to 1. As votes for naming clusters, one labelled box then speaks for every cluster,
    where the detections over it may name only one or two (or none, if it was missed).
    Single-process; images without boxes yield nothing.
    """
    model = getattr(model, "module", model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn)
    results = []
    for images, targets in loader:
        boxes = [{"boxes": t["boxes"].to(device)} for t in targets]
        image_list, resized = model.transform([image.to(device) for image in images], boxes)
        features = model.backbone(image_list.tensors)
        rois = [t["boxes"] for t in resized]
        pooled = model.roi_heads.box_roi_pool(features, rois, image_list.image_sizes)
        logits, _ = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        probs = torch.softmax(logits.float(), dim=1)[:, 1:]  # column 0 is the background
        probs = (probs / probs.sum(1, keepdim=True).clamp_min(1e-12)).cpu()
        per_image = probs.split([len(r) for r in rois])
        for target, box_probs in zip(targets, per_image, strict=True):
            for box, p in zip(_xywh(target["boxes"]), box_probs.tolist(), strict=True):
                results.extend(
                    _result(target["image_id"], categories.category_id(label), box, score)
                    for label, score in enumerate(p, start=1)
                )
    model.train(was_training)
    return results


def evaluate_detector(
    model: nn.Module,
    dataset: CocoDetectionDataset,
    output_dir: str | os.PathLike,
    categories: CategoryMap | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
) -> dict:
    """Inference into `output_dir`, then COCO metrics and their report when they mean something.

    Metrics (`evaluate_coco`'s dict, report files `detector_metrics.{json,md}`,
    `detector_ap50.png`) need ground-truth boxes in `dataset` and the same categories as the
    detector's; otherwise (e.g. a detector of clusters on a set with real class names, which
    stage 4 names first) only the results are written. Returns {} on processes other than the
    main one.
    """
    categories = categories or dataset.categories
    results = run_detector_inference(
        model, dataset, output_dir, categories, batch_size=batch_size, num_workers=num_workers
    )
    if not comm.is_main_process():
        return {}
    summary = {"num_images": len(dataset), "num_detections": len(results)}
    if not dataset.coco["annotations"]:
        logger.info(
            "%s has no ground-truth boxes: results written, not evaluated", dataset.json_path
        )
        return summary
    if (categories.category_ids, categories.names) != (
        dataset.categories.category_ids,
        dataset.categories.names,
    ):
        logger.warning(
            "the detector's categories %s differ from those of %s (%s): results written, not "
            "evaluated (name clusters with tools/match_clusters.py first)",
            categories.names[:10],
            dataset.json_path,
            dataset.categories.names[:10],
        )
        return summary
    metrics = evaluate_coco(dataset.coco, results)
    write_coco_report(metrics, output_dir, REPORT_PREFIX)
    return metrics
