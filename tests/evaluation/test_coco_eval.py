"""COCO metrics with pycocotools on a small real GT file, against hand-computed APs."""

import copy
import json

import cv2
import numpy as np
import pytest

from avdet.evaluation.coco_eval import evaluate_coco, write_coco_report

GT = {
    "images": [
        {"id": 1, "file_name": "a.jpg", "width": 320, "height": 240},
        {"id": 2, "file_name": "b.jpg", "width": 320, "height": 240},
        {"id": 3, "file_name": "c.jpg", "width": 320, "height": 240},
    ],
    "categories": [
        {"id": 1, "name": "guitar"},
        {"id": 2, "name": "drum"},
        {"id": 3, "name": "piano"},  # no GT box: no AP
    ],
    # No iscrowd / area fields: the evaluator fills them in.
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 100, 100]},
        {"id": 2, "image_id": 3, "category_id": 1, "bbox": [150, 100, 100, 100]},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [50, 40, 120, 80]},
    ],
}


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


@pytest.fixture
def gt_path(tmp_path):
    path = tmp_path / "instances_test.json"
    path.write_text(json.dumps(GT))
    return path


def _perfect():
    return [_det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in GT["annotations"]]


def test_perfect_detections(gt_path, capsys):
    metrics = evaluate_coco(gt_path, _perfect())
    assert metrics["AP"] == pytest.approx(1.0)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(1.0)
    per_class = metrics["per_class_AP50"]
    assert per_class["guitar"] == pytest.approx(1.0) and per_class["drum"] == pytest.approx(1.0)
    assert per_class["piano"] is None
    assert metrics["num_images"] == 3 and metrics["num_detections"] == 3
    assert "Average Precision" not in capsys.readouterr().out  # pycocotools' prints are captured


def test_shifted_box_counts_for_ap50_not_ap75(gt_path):
    # Shifting a 100x100 box by 25 px: IoU = 75 * 100 / (125 * 100) = 0.6.
    detections = [
        _det(1, 1, [35, 10, 100, 100], 0.5),
        _det(3, 1, [150, 100, 100, 100], 0.9),
        _det(2, 2, [50, 40, 120, 80], 0.9),
    ]
    metrics = evaluate_coco(gt_path, detections)
    assert metrics["AP50"] == pytest.approx(1.0)
    # AP75: guitar reaches recall 0.5 at precision 1 (51 of 101 recall points), drum is perfect.
    assert metrics["AP75"] == pytest.approx((51 / 101 + 1.0) / 2)


def test_wrong_class_gives_zero_for_that_class(gt_path):
    detections = [
        _det(2, 1, [50, 40, 120, 80], 0.95),  # the drum, called a guitar
        _det(1, 1, [10, 10, 100, 100], 0.8),
        _det(3, 1, [150, 100, 100, 100], 0.7),
    ]
    metrics = evaluate_coco(gt_path, detections)
    assert metrics["per_class_AP50"]["drum"] == 0.0
    # Guitar: FP, TP, TP -> the interpolated precision is 2/3 at every recall level.
    assert metrics["per_class_AP50"]["guitar"] == pytest.approx(2 / 3)
    assert metrics["AP50"] == pytest.approx((2 / 3 + 0.0) / 2)


def test_empty_detections_give_zeros(gt_path):
    metrics = evaluate_coco(gt_path, [])
    assert (metrics["AP"], metrics["AP50"], metrics["AP75"]) == (0.0, 0.0, 0.0)
    assert metrics["per_class_AP50"] == {"guitar": 0.0, "drum": 0.0, "piano": None}
    assert metrics["num_detections"] == 0


def test_dict_input_is_not_mutated_and_unknown_images_are_skipped():
    gt = copy.deepcopy(GT)
    detections = [*_perfect(), _det(99, 1, [0, 0, 10, 10], 0.99), _det(1, 42, [0, 0, 10, 10], 0.99)]
    metrics = evaluate_coco(gt, detections)
    assert gt == GT
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["num_detections"] == 3 and metrics["num_skipped_detections"] == 2
    assert "iscrowd" not in detections[0] and "area" not in detections[0]


def test_bad_input(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**GT, "annotations": []}))
    with pytest.raises(ValueError, match=f"{empty}: has no ground-truth boxes"):
        evaluate_coco(empty, _perfect())
    with pytest.raises(ValueError, match="detection 0 is not a COCO bbox result"):
        evaluate_coco(GT, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}])
    with pytest.raises(ValueError, match="not supported"):
        evaluate_coco(GT, _perfect(), iou_type="segm")


def test_write_coco_report(gt_path, tmp_path):
    metrics = evaluate_coco(gt_path, _perfect()[:2])  # the drum is missed
    paths = write_coco_report(metrics, tmp_path / "out", "selfsup")
    assert json.loads(paths["json"].read_text()) == metrics
    markdown = paths["markdown"].read_text()
    assert "| guitar | 1.000 |" in markdown and "| drum | 0.000 |" in markdown
    assert "| piano | n/a |" in markdown
    image = cv2.imread(str(paths["png"]))
    assert image is not None and image.ndim == 3
    # One bar row per class; the guitar bar (first row, full length) is drawn, the drum bar is not.
    bar_colour = np.all(image == (180, 120, 40), axis=-1)
    rows_with_bar = np.flatnonzero(bar_colour.sum(axis=1) > 300)
    assert rows_with_bar.size > 0 and rows_with_bar.max() < 40 + 24
