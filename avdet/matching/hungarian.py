"""Naming the clusters: a cluster x class agreement matrix from a handful of labelled boxes, solved
with the Hungarian algorithm (scipy's linear_sum_assignment), then used to relabel detections.

Votes (`votes=`):
- "score" (default): every detection votes, with its score, for (its cluster, the class of the
  labelled box it overlaps most, IoU >= iou_threshold). A detector emits a box per class it finds
  likely, so one labelled object collects the detector's whole class distribution, not just its
  top guess: with one labelled image per class that is most of the evidence there is.
- "matched": COCO-style, one vote per labelled box: detections in descending score order, each
  taking the unmatched labelled box of highest IoU (>= iou_threshold).
Either way one detection votes at most once, so a large box covering two objects cannot vote twice.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from avdet.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
ClusterTarget = int | str | None  # a class id, UNKNOWN, or None (dropped)


class Agreement(NamedTuple):
    """The agreement matrix with its row / column ids and what was counted while building it."""

    matrix: np.ndarray  # [num_clusters, num_classes] float64 votes
    cluster_ids: list[int]  # row i <-> detector category id cluster_ids[i]
    class_ids: list[int]  # column j <-> labelled category id class_ids[j]
    num_labelled_boxes: int
    num_ignored_detections: int  # detections on images that carry no label


def max_agreement_assignment(matrix: np.ndarray) -> list[tuple[int, int]]:
    """(row, col) pairs maximising the total agreement; pairs with zero agreement are left out.

    Works for any [R, C] shape: min(R, C) pairs are assigned, the rest stay unmatched.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"agreement matrix must be 2-D, got shape {matrix.shape}")
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if matrix[r, c] > 0]


def box_iou_xywh(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """[N, M] IoU between [N, 4] and [M, 4] boxes in COCO xywh format."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    a_x2, a_y2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    b_x2, b_y2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    inter_w = np.minimum(a_x2[:, None], b_x2[None]) - np.maximum(a[:, None, 0], b[None, :, 0])
    inter_h = np.minimum(a_y2[:, None], b_y2[None]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _greedy_matches(
    det_boxes: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float
) -> list[tuple[int, int]]:
    """(detection, gt) index pairs; detections must already be sorted by descending score."""
    iou = box_iou_xywh(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    matches = []
    for d in range(len(det_boxes)):
        candidates = np.where(taken, -1.0, iou[d])
        g = int(np.argmax(candidates))
        if candidates[g] >= iou_threshold:
            taken[g] = True
            matches.append((d, g))
    return matches


def _label_boxes_by_image(labels: Mapping) -> tuple[dict[int, list[dict]], list[int]]:
    """Group the labelled annotations by image id; checks they name known categories."""
    annotations = labels.get("annotations") or []
    if not annotations:
        raise ValueError("labels contain no annotations: at least one labelled box is needed")
    class_ids = sorted(int(c["id"]) for c in labels.get("categories", []))
    known = set(class_ids)
    by_image: dict[int, list[dict]] = {}
    for ann in annotations:
        if int(ann["category_id"]) not in known:
            raise ValueError(
                f"labels: annotation {ann.get('id')} has category_id {ann['category_id']} "
                f"that is not in the labels' categories {class_ids}"
            )
        by_image.setdefault(int(ann["image_id"]), []).append(ann)
    return by_image, class_ids


VOTES = ("score", "matched")


def agreement_matrix(
    detections: Sequence[Mapping],
    labels: Mapping,
    iou_threshold: float = 0.5,
    cluster_ids: Sequence[int] | None = None,
    votes: str = "score",
) -> Agreement:
    """Sum (cluster, class) votes of detections (COCO results) on labelled GT boxes (module doc).

    ``labels`` is a COCO dict whose annotations carry real category ids; columns follow its
    categories (sorted ids). Rows follow ``cluster_ids`` if given (e.g. all K clusters of the
    detector), otherwise the sorted category ids seen in ``detections``. Detections on images
    without labels are ignored and counted.
    """
    if votes not in VOTES:
        raise ValueError(f"votes must be one of {VOTES}, got {votes!r}")
    by_image, class_ids = _label_boxes_by_image(labels)
    if cluster_ids is None:
        cluster_ids = sorted({int(d["category_id"]) for d in detections})
    row_of = {int(c): i for i, c in enumerate(cluster_ids)}
    col_of = {c: j for j, c in enumerate(class_ids)}
    dets_by_image: dict[int, list[Mapping]] = {}
    ignored = 0
    for det in detections:
        if int(det["category_id"]) not in row_of:
            raise ValueError(f"detection category {det['category_id']} not in cluster_ids")
        if int(det["image_id"]) in by_image:
            dets_by_image.setdefault(int(det["image_id"]), []).append(det)
        else:
            ignored += 1
    matrix = np.zeros((len(row_of), len(class_ids)), dtype=np.float64)
    for image_id, dets in dets_by_image.items():
        dets = sorted(dets, key=lambda d: -float(d["score"]))
        gts = by_image[image_id]
        det_boxes, gt_boxes = (
            np.array([d["bbox"] for d in dets]),
            np.array([g["bbox"] for g in gts]),
        )
        if votes == "matched":
            pairs = _greedy_matches(det_boxes, gt_boxes, iou_threshold)
        else:
            iou = box_iou_xywh(det_boxes, gt_boxes)
            best = iou.argmax(1)
            pairs = [(d, int(g)) for d, g in enumerate(best) if iou[d, g] >= iou_threshold]
        for d, g in pairs:
            weight = float(dets[d]["score"]) if votes == "score" else 1.0
            matrix[row_of[int(dets[d]["category_id"])], col_of[int(gts[g]["category_id"])]] += (
                weight
            )
    if ignored:
        logger.info("ignored %d detections on images without labels", ignored)
    num_boxes = sum(len(v) for v in by_image.values())
    return Agreement(matrix, [int(c) for c in cluster_ids], class_ids, num_boxes, ignored)


def match_clusters(
    matrix: np.ndarray,
    cluster_ids: Sequence[int],
    class_ids: Sequence[int],
    keep_unmatched: str = "drop",
) -> dict[int, ClusterTarget]:
    """Map every cluster id to a class id by maximum total agreement (Hungarian).

    K != C is allowed: with more clusters than classes the extra clusters stay unmatched, with
    fewer some classes stay unnamed. A cluster whose assigned pair has zero votes is unmatched.
    Unmatched clusters map to None (``keep_unmatched="drop"``) or to ``"unknown"``.
    """
    if keep_unmatched not in ("drop", UNKNOWN):
        raise ValueError(f"keep_unmatched must be 'drop' or 'unknown', got {keep_unmatched!r}")
    matrix = np.asarray(matrix)
    if matrix.shape != (len(cluster_ids), len(class_ids)):
        raise ValueError(
            f"matrix shape {matrix.shape} does not match {len(cluster_ids)} clusters "
            f"x {len(class_ids)} classes"
        )
    unmatched: ClusterTarget = None if keep_unmatched == "drop" else UNKNOWN
    mapping: dict[int, ClusterTarget] = {int(c): unmatched for c in cluster_ids}
    for row, col in max_agreement_assignment(matrix):
        mapping[int(cluster_ids[row])] = int(class_ids[col])
    return mapping


def relabel_detections(
    detections: Sequence[Mapping],
    mapping: Mapping[int, ClusterTarget],
    unknown_category_id: int | None = None,
) -> list[dict]:
    """Copies of the detections with real category ids; clusters mapped to None are dropped.

    Clusters mapped to ``"unknown"`` get ``unknown_category_id`` (required if any is present). A
    detection whose cluster is absent from the mapping is an error: build the matrix with all the
    detector's cluster ids.
    """
    relabelled = []
    for det in detections:
        cluster = int(det["category_id"])
        if cluster not in mapping:
            raise ValueError(f"detection cluster {cluster} is not in the mapping")
        target = mapping[cluster]
        if target is None:
            continue
        if target == UNKNOWN:
            if unknown_category_id is None:
                raise ValueError("the mapping has 'unknown' clusters: pass unknown_category_id")
            target = unknown_category_id
        relabelled.append({**det, "category_id": int(target)})
    logger.info("relabelled %d of %d detections", len(relabelled), len(detections))
    return relabelled


def save_mapping(
    path: str | os.PathLike,
    mapping: Mapping[int, ClusterTarget],
    agreement: Agreement,
    class_names: Mapping[int, str],
    cluster_names: Mapping[int, str] | None = None,
) -> None:
    """Write the mapping as readable JSON (atomically): per cluster its class, name and votes."""
    cluster_names = cluster_names or {}
    col_of = {c: j for j, c in enumerate(agreement.class_ids)}
    clusters = []
    for row, cluster in enumerate(agreement.cluster_ids):
        target = mapping.get(cluster)
        votes = agreement.matrix[row]
        clusters.append(
            {
                "cluster_id": cluster,
                "cluster_name": cluster_names.get(cluster, str(cluster)),
                "class_id": target,
                "class_name": class_names.get(target) if isinstance(target, int) else target,
                "votes": round(float(votes[col_of[target]]), 4) if isinstance(target, int) else 0,
                "total_votes": round(float(votes.sum()), 4),
            }
        )
    atomic_write_json(
        path,
        {
            "clusters": clusters,
            "class_ids": agreement.class_ids,
            "class_names": [class_names.get(c, str(c)) for c in agreement.class_ids],
            "matrix": agreement.matrix.tolist(),
            "num_labelled_boxes": agreement.num_labelled_boxes,
            "num_votes": round(float(agreement.matrix.sum()), 4),
            "num_ignored_detections": agreement.num_ignored_detections,
        },
        indent=2,
    )


def load_mapping(path: str | os.PathLike) -> dict[int, ClusterTarget]:
    """Read back the cluster -> class id (or "unknown" / None) mapping written by save_mapping."""
    try:
        record = json.loads(Path(path).read_text())
        return {int(c["cluster_id"]): c["class_id"] for c in record["clusters"]}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a cluster mapping written by save_mapping ({err})") from None
