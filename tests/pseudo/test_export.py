"""Pseudo-labelled COCO export and its quality report, from known heatmaps on known frames."""

from __future__ import annotations

import numpy as np
import pytest

from avdet.config import load_config
from avdet.data.coco import validate_coco
from avdet.models.av_inference import AVPredictions
from avdet.pseudo.export import build_pseudo_coco, gt_annotations_by_file, pseudo_quality


def records(n: int) -> list[dict]:
    return [
        {
            "clip_id": f"c{i}",
            "video": f"/data/video/c{i}.mp4",
            "frame": f"frames/c{i}.jpg",
            "width": 80,
            "height": 40,
            "label": "drum" if i % 2 == 0 else "bell",
        }
        for i in range(n)
    ]


def predictions(
    heatmaps: list[np.ndarray], clusters: list[int], scores: list[float]
) -> AVPredictions:
    return AVPredictions(
        heatmaps=np.stack(heatmaps).astype(np.float32),
        scores=np.array(scores, np.float32),
        clusters=np.array(clusters),
        confidence=np.ones(len(clusters), np.float32),
        clip_ids=[f"c{i}" for i in range(len(clusters))],
    )


def hot(rows: slice, cols: slice) -> np.ndarray:
    h = np.zeros((4, 8), np.float32)
    h[rows, cols] = 1.0
    return h


PSEUDO = load_config().PSEUDO


def test_boxes_in_image_pixels_with_cluster_categories_and_scores():
    preds = predictions(
        [hot(slice(0, 2), slice(0, 4)), hot(slice(2, 4), slice(4, 8))], [2, 0], [0.9, 0.4]
    )
    coco, counts = build_pseudo_coco(records(2), preds, num_clusters=3, pseudo_cfg=PSEUDO)
    validate_coco(coco, "pseudo")
    assert [c["name"] for c in coco["categories"]] == ["cluster_0", "cluster_1", "cluster_2"]
    assert [a["category_id"] for a in coco["annotations"]] == [3, 1]  # cluster k -> id k + 1
    x, y, w, h = coco["annotations"][0]["bbox"]  # top-left quarter of an 80x40 frame
    assert (x, y) == pytest.approx((0, 0), abs=4) and (w, h) == pytest.approx((40, 20), abs=6)
    assert coco["annotations"][1]["score"] == pytest.approx(0.4)
    assert coco["images"][0]["file_name"] == "frames/c0.jpg"
    assert counts == {"images": 2, "boxes": 2, "clips": 2}


def test_flat_heatmaps_are_negatives_or_dropped_and_low_scores_dropped():
    flat = np.ones((4, 8), np.float32)
    preds = predictions(
        [flat, hot(slice(0, 2), slice(0, 2)), hot(slice(0, 2), slice(0, 2))],
        [0, 1, 1],
        [0.5, 0.1, 0.9],
    )
    keep = PSEUDO.clone().defrost()
    keep.SCORE_PERCENTILE = 40.0  # drops the lowest-score clip
    coco, counts = build_pseudo_coco(records(3), preds, 2, keep)
    assert counts["dropped_low_score"] == 1 and counts["negatives"] == 1 and counts["no_box"] == 1
    assert len(coco["images"]) == 2 and len(coco["annotations"]) == 1
    keep.KEEP_NEGATIVES = False
    coco, counts = build_pseudo_coco(records(3), preds, 2, keep)
    assert len(coco["images"]) == 1 and "negatives" not in counts


def test_quality_against_ground_truth():
    preds = predictions(
        [hot(slice(0, 2), slice(0, 4)), hot(slice(0, 2), slice(0, 4))], [0, 0], [0.9, 0.8]
    )
    coco, _ = build_pseudo_coco(records(2), preds, 2, PSEUDO)
    gt = {
        "images": [
            {"id": 1, "file_name": "c0.mp4", "width": 80, "height": 40},
            {"id": 2, "file_name": "c1.mp4", "width": 80, "height": 40},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 40, 20], "sounding": True},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [40, 20, 40, 20], "sounding": True},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 20], "sounding": False},
        ],
        "categories": [{"id": 1, "name": "drum"}, {"id": 2, "name": "bell"}],
    }
    quality = pseudo_quality(coco, gt_annotations_by_file([gt]), {"c0": "drum", "c1": "bell"})
    # clip 0's box hits its sounding object; clip 1's box sits on the silent one: a miss
    assert quality["box_precision50"] == 0.5
    assert quality["num_frames_with_gt"] == 2
    assert quality["cluster_purity"] == 0.5  # one cluster holding one drum and one bell
    assert 0.0 < quality["agnostic_ap50"] <= 0.51
    with pytest.raises(ValueError, match="no pseudo-labelled frame has ground truth"):
        pseudo_quality(coco, {}, {})
