"""Stage 2 output: the pseudo-labelled training set as standard COCO JSON, and its quality report.

Categories are the clusters (`cluster_0` .. `cluster_{K-1}`, ids 1..K), images are the prepared
frame JPEGs (file_name relative to the prepared folder), one or more boxes per image with the
clip's cluster id and its pair score. detectron2's `register_coco_instances` and mmdet's
CocoDataset load it unchanged (docs/pseudo_labels.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from avdet.config import CfgNode
from avdet.data.coco import coco_index
from avdet.evaluation.coco_eval import evaluate_coco
from avdet.matching.hungarian import box_iou_xywh
from avdet.models.av_inference import AVPredictions
from avdet.pseudo.boxes import heatmap_to_boxes

logger = logging.getLogger(__name__)


def build_pseudo_coco(
    records: Sequence[dict],
    preds: AVPredictions,
    num_clusters: int,
    pseudo_cfg: CfgNode,
    input_size: Sequence[int] | None = None,
) -> tuple[dict, dict]:
    """COCO dict of pseudo-boxes for the prepared clips `records`, and counts of what happened.

    records: manifest lines (frame, width, height, clip_id, video) in the order of `preds`;
    input_size: the (height, width) of the frames the heatmaps were computed on (see
    `heatmap_to_boxes`).
    """
    keep_score = (
        np.percentile(preds.scores, pseudo_cfg.SCORE_PERCENTILE)
        if pseudo_cfg.SCORE_PERCENTILE > 0
        else -np.inf
    )
    images, annotations = [], []
    counts = Counter()
    for i, record in enumerate(records):
        if preds.scores[i] < keep_score:
            counts["dropped_low_score"] += 1
            continue
        boxes = heatmap_to_boxes(
            preds.heatmaps[i],
            (record["height"], record["width"]),
            beta=pseudo_cfg.BETA,
            max_boxes=pseudo_cfg.MAX_BOXES,
            min_area_frac=pseudo_cfg.MIN_AREA_FRAC,
            min_box_size=pseudo_cfg.MIN_BOX_SIZE,
            input_size=input_size,
        )
        if not boxes:
            counts["no_box"] += 1
            if not pseudo_cfg.KEEP_NEGATIVES:
                continue
            counts["negatives"] += 1
        image_id = len(images) + 1
        images.append(
            {
                "id": image_id,
                "file_name": record["frame"],
                "width": record["width"],
                "height": record["height"],
                "clip_id": record["clip_id"],
                "video_file": Path(record["video"]).name,
            }
        )
        for x0, y0, x1, y1 in boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(preds.clusters[i]) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                    "score": float(preds.scores[i]),
                }
            )
    counts.update(images=len(images), boxes=len(annotations), clips=len(records))
    coco = {
        "info": {"description": "avdet pseudo-labels (stage 2)"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": f"cluster_{k}"} for k in range(num_clusters)],
    }
    return coco, dict(counts)


def gt_annotations_by_file(gt_datasets: Sequence[dict]) -> dict[str, list[dict]]:
    """Ground-truth annotations of COCO datasets keyed by image file_name (the video file name)."""
    by_file: dict[str, list[dict]] = {}
    for gt in gt_datasets:
        images, anns, _ = coco_index(gt)
        for image_id, image in images.items():
            by_file.setdefault(image["file_name"], []).extend(anns.get(image_id, []))
    return by_file


def pseudo_quality(
    pseudo: dict, gt_by_file: dict[str, list[dict]], clip_labels: dict[str, str]
) -> dict:
    """How good the pseudo-labels are against ground truth (only on frames that have GT).

    - box_precision50: fraction of pseudo-boxes with IoU >= 0.5 to a sounding GT box of the frame;
    - agnostic_ap50: class-agnostic AP50 of the pseudo-boxes (scored by pair score) on the
      sounding GT boxes;
    - cluster_purity: sum over clusters of their most common class, over all pseudo-boxes.
    gt_by_file: GT annotations keyed by video file name (`sounding` per annotation if known).
    """
    agnostic_gt = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    gt_boxes: dict[int, list] = {}
    for image in pseudo["images"]:
        if image["video_file"] not in gt_by_file:
            continue
        sounding = [a for a in gt_by_file[image["video_file"]] if a.get("sounding", True)]
        agnostic_gt["images"].append({k: image[k] for k in ("id", "file_name", "width", "height")})
        gt_boxes[image["id"]] = [a["bbox"] for a in sounding]
        for a in sounding:
            agnostic_gt["annotations"].append(
                {
                    **a,
                    "id": len(agnostic_gt["annotations"]) + 1,
                    "image_id": image["id"],
                    "category_id": 1,
                }
            )
    detections, hits = [], 0
    for ann in pseudo["annotations"]:
        image_gt = gt_boxes.get(ann["image_id"], [])
        hits += bool(image_gt) and bool((box_iou_xywh([ann["bbox"]], image_gt) >= 0.5).any())
        detections.append(
            {
                "image_id": ann["image_id"],
                "category_id": 1,
                "bbox": ann["bbox"],
                "score": ann["score"],
            }
        )
    if not agnostic_gt["images"]:
        raise ValueError("no pseudo-labelled frame has ground truth (file names do not match)")
    per_cluster: dict[int, Counter] = {}
    images = {img["id"]: img for img in pseudo["images"]}
    for ann in pseudo["annotations"]:
        label = clip_labels.get(images[ann["image_id"]]["clip_id"])
        per_cluster.setdefault(ann["category_id"], Counter())[label] += 1
    total = sum(sum(c.values()) for c in per_cluster.values())
    return {
        "num_frames_with_gt": len(agnostic_gt["images"]),
        "num_boxes": len(pseudo["annotations"]),
        "box_precision50": hits / max(len(pseudo["annotations"]), 1),
        "agnostic_ap50": evaluate_coco(agnostic_gt, detections)["AP50"],
        "cluster_purity": sum(c.most_common(1)[0][1] for c in per_cluster.values()) / max(total, 1),
    }
