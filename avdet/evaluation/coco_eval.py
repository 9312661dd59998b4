"""COCO detection metrics with pycocotools (AP, AP50, AP75, per-class AP50) and their report files.

All values are fractions in [0, 1] (pycocotools' own scale), not percent. A class without any
ground-truth box has no AP: its per-class value is None (and pycocotools leaves it out of AP).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from avdet.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

REQUIRED_DETECTION_KEYS = ("image_id", "category_id", "bbox", "score")


def _quiet(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a pycocotools function with its stdout captured and logged at debug level."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        result = fn(*args)
    if buffer.getvalue().strip():
        logger.debug("pycocotools: %s", buffer.getvalue().strip())
    return result


def _load_gt(gt: str | os.PathLike | Mapping) -> tuple[dict, str]:
    """A private copy of the GT COCO dict (iscrowd / area filled in) and its name for messages."""
    if isinstance(gt, Mapping):
        dataset, source = copy.deepcopy(dict(gt)), "ground-truth dict"
    else:
        source = str(gt)
        try:
            dataset = json.loads(Path(gt).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}: not valid JSON ({err})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{source}: missing the COCO list {key!r}")
    if not dataset["annotations"]:
        raise ValueError(f"{source}: has no ground-truth boxes to evaluate against")
    names = [c["name"] for c in dataset["categories"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: category names are not unique: {names}")
    for ann in dataset["annotations"]:
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
    return dataset, source


def _usable_detections(detections: Sequence[Mapping], dataset: dict) -> list[dict]:
    """Copies of the detections on known images and categories (others are counted and skipped)."""
    image_ids = {img["id"] for img in dataset["images"]}
    category_ids = {cat["id"] for cat in dataset["categories"]}
    usable = []
    for index, det in enumerate(detections):
        missing = [k for k in REQUIRED_DETECTION_KEYS if k not in det]
        if missing or len(det["bbox"]) != 4:
            raise ValueError(f"detection {index} is not a COCO bbox result (missing {missing})")
        if det["image_id"] in image_ids and det["category_id"] in category_ids:
            usable.append(copy.deepcopy(dict(det)))
    if len(usable) < len(detections):
        logger.warning(
            "skipped %d detections on unknown images or categories", len(detections) - len(usable)
        )
    return usable


def _per_class_ap50(evaluator: COCOeval | None, dataset: dict) -> dict[str, float | None]:
    """AP at IoU 0.5 per category name (area 'all', 100 detections); None for classes without GT."""
    with_gt = {ann["category_id"] for ann in dataset["annotations"]}
    result: dict[str, float | None] = {}
    for k, cat in enumerate(sorted(dataset["categories"], key=lambda c: c["id"])):
        if cat["id"] not in with_gt:
            result[cat["name"]] = None
        elif evaluator is None:
            result[cat["name"]] = 0.0
        else:
            precision = evaluator.eval["precision"][0, :, k, 0, -1]
            valid = precision[precision > -1]
            result[cat["name"]] = float(valid.mean()) if valid.size else 0.0
    return result


def evaluate_coco(
    gt: str | os.PathLike | Mapping,
    detections: Sequence[Mapping],
    iou_type: str = "bbox",
) -> dict:
    """COCO box metrics of ``detections`` (COCO results format) against a GT JSON path or dict.

    Returns fractions ``AP`` (IoU 0.5:0.95), ``AP50``, ``AP75``, ``per_class_AP50``
    {category name: value or None}, ``num_images`` (GT images), ``num_detections`` (evaluated) and
    ``num_skipped_detections`` (on images or categories absent from the GT). An empty detection
    list gives zeros.
    """
    if iou_type != "bbox":
        raise ValueError(f"iou_type {iou_type!r} is not supported: avdet evaluates boxes ('bbox')")
    dataset, source = _load_gt(gt)
    usable = _usable_detections(detections, dataset)
    stats = [0.0, 0.0, 0.0]
    evaluator = None
    if usable:
        coco_gt = COCO()
        coco_gt.dataset = dataset
        _quiet(coco_gt.createIndex)
        coco_dt = _quiet(coco_gt.loadRes, usable)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        for step in (evaluator.evaluate, evaluator.accumulate, evaluator.summarize):
            _quiet(step)
        stats = [float(s) for s in evaluator.stats[:3]]
    logger.info(
        "COCO %s on %s: AP50 %.4f over %d detections", iou_type, source, stats[1], len(usable)
    )
    return {
        "AP": stats[0],
        "AP50": stats[1],
        "AP75": stats[2],
        "per_class_AP50": _per_class_ap50(evaluator, dataset),
        "num_images": len(dataset["images"]),
        "num_detections": len(usable),
        "num_skipped_detections": len(detections) - len(usable),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _markdown(metrics: Mapping) -> str:
    """Overall and per-class table (fractions, 3 decimals)."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {key} | {_fmt(metrics[key])} |" for key in ("AP", "AP50", "AP75")]
    lines += [
        f"| images | {metrics['num_images']} |",
        f"| detections | {metrics['num_detections']} |",
    ]
    lines += ["", "| class | AP50 |", "|---|---|"]
    lines += [f"| {name} | {_fmt(v)} |" for name, v in metrics["per_class_AP50"].items()]
    return "Values are fractions in [0, 1].\n\n" + "\n".join(lines) + "\n"


def draw_ap50_chart(per_class: Mapping[str, float | None], bar_width: int = 400) -> np.ndarray:
    """A horizontal bar chart of per-class AP50 as a [H, W, 3] uint8 BGR image (OpenCV only)."""
    font, scale, row, pad = cv2.FONT_HERSHEY_SIMPLEX, 0.5, 24, 10
    names = list(per_class)
    label_w = max([cv2.getTextSize(n, font, scale, 1)[0][0] for n in names] + [60])
    width, height = pad + label_w + pad + bar_width + 70, 40 + row * len(names) + pad
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    cv2.putText(image, "AP50 per class", (pad, 25), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    x0 = pad + label_w + pad
    for i, name in enumerate(names):
        y = 40 + i * row
        value = per_class[name]
        cv2.putText(image, name, (pad, y + 16), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
        x1 = x0 + round((value or 0.0) * bar_width)
        cv2.rectangle(image, (x0, y + 4), (max(x1, x0 + 1), y + row - 4), (180, 120, 40), -1)
        cv2.putText(image, _fmt(value), (x1 + 5, y + 16), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return image


def write_coco_report(metrics: Mapping, output_dir: str | os.PathLike, prefix: str) -> dict:
    """Write ``<prefix>_metrics.json``, ``<prefix>_metrics.md`` and ``<prefix>_ap50.png``.

    Returns {"json": path, "markdown": path, "png": path}. Files are written atomically.
    """
    output_dir = Path(output_dir)
    paths = {
        "json": output_dir / f"{prefix}_metrics.json",
        "markdown": output_dir / f"{prefix}_metrics.md",
        "png": output_dir / f"{prefix}_ap50.png",
    }
    atomic_write_json(paths["json"], dict(metrics), indent=2)
    atomic_write_text(paths["markdown"], _markdown(metrics))
    ok, encoded = cv2.imencode(".png", draw_ap50_chart(metrics["per_class_AP50"]))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode the AP50 chart for {paths['png']}")
    atomic_write_bytes(paths["png"], encoded.tobytes())
    return paths
