"""TASK "detector" end to end on a tiny real COCO set: train, results file, metrics, eval-only."""

from __future__ import annotations

import argparse
import json
import runpy
from pathlib import Path

import pytest

from avdet.config import ConfigError, load_config
from avdet.config.setup import save_config
from avdet.data.coco import CocoFormatError, load_coco
from avdet.detection import task
from avdet.detection.dataset import CocoDetectionDataset
from avdet.detection.inference import classify_boxes, evaluate_detector
from avdet.engine.checkpoint import CheckpointError
from avdet.engine.tasks import get_task
from avdet.utils.io import read_jsonl

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "toy" / "detector.yaml"
TINY = [
    "DEVICE", "cpu", "SEED", "0", "DATALOADER.NUM_WORKERS", "0",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "300", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "100",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128",
    "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.BASE_LR", "0.02", "SOLVER.WARMUP_ITERS", "5",
    "SOLVER.LOG_PERIOD", "5", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.IMS_PER_BATCH", "4",
]  # fmt: skip


def _args(**kwargs) -> argparse.Namespace:
    return argparse.Namespace(**{"eval_only": False, "resume": False, **kwargs})


def _cfg(out: Path, train_json: Path, iters: int, *opts: str):
    return load_config(
        CONFIG,
        [*TINY, "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", str(iters),
         "DATASETS.TRAIN_JSON", str(train_json), "DATASETS.TEST_JSON", str(train_json), *opts],
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained(shapes_coco, tmp_path_factory):
    """20 iterations on 10 images (2 classes, 2 negatives); (output dir, json, results)."""
    train_json = shapes_coco(num_images=10, num_classes=2, negatives=2)
    out = tmp_path_factory.mktemp("detector")
    results = get_task("detector")(_cfg(out, train_json, 20), _args())
    return out, train_json, results


def test_task_is_registered():
    assert get_task("detector") is task.run


def test_training_lowers_the_loss_and_writes_outputs(trained):
    out, train_json, results = trained
    records = [r for r in read_jsonl(out / "metrics.json") if "total_loss" in r]
    assert len(records) == 4  # every 5 of 20 iterations
    assert {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(
        records[0]
    )
    assert records[-1]["total_loss"] < 0.7 * records[0]["total_loss"]
    assert (out / "model_final.pth").is_file() and (out / "last_checkpoint").is_file()
    assert results["train_images"] == 10 and results["train_negatives"] == 2
    assert {"AP", "AP50", "AP75", "per_class_AP50"} <= set(results)
    assert any("bbox/AP50" in r for r in read_jsonl(out / "metrics.json"))


def test_results_are_valid_coco_with_the_json_category_ids(trained):
    out, train_json, _ = trained
    detections = json.loads((out / "inference" / "coco_instances_results.json").read_text())
    gt = load_coco(train_json)
    image_ids = {image["id"] for image in gt["images"]}
    assert detections, "an untrained-looking detector still proposes boxes"
    for det in detections:
        assert set(det) == {"image_id", "category_id", "bbox", "score"}
        assert det["image_id"] in image_ids and det["category_id"] in (10, 20)
        x, y, w, h = det["bbox"]
        assert w >= 0 and h >= 0 and x >= 0 and y >= 0 and x + w <= 128.01 and y + h <= 96.01
        assert 0.0 <= det["score"] <= 1.0
    for name in ("detector_metrics.json", "detector_metrics.md", "detector_ap50.png"):
        assert (out / "inference" / name).is_file()


def test_eval_only_reproduces_the_final_evaluation(trained):
    out, train_json, results = trained
    cfg = _cfg(out, train_json, 20)
    again = task.run(cfg, _args(eval_only=True))
    assert again["AP50"] == pytest.approx(results["AP50"])
    assert again["num_detections"] == results["num_detections"]


def test_other_categories_are_run_but_not_scored(trained, tmp_path):
    """A detector of clusters on a test set with real class names: results only, no metrics."""
    out, train_json, _ = trained
    coco = load_coco(train_json)
    for cat in coco["categories"]:
        cat["name"] = "real_" + cat["name"]
    renamed = train_json.parent / "renamed.json"
    renamed.write_text(json.dumps(coco))
    cfg = _cfg(tmp_path, train_json, 20, "MODEL.WEIGHTS", str(out / "model_final.pth"))
    model = task.load_detector(cfg, task.detector_categories(cfg))
    dataset = CocoDetectionDataset(renamed)
    summary = evaluate_detector(
        model, dataset, tmp_path, CocoDetectionDataset(train_json).categories
    )
    assert set(summary) == {"num_images", "num_detections"} and summary["num_images"] == 10
    assert (tmp_path / "coco_instances_results.json").is_file()
    assert not (tmp_path / "detector_metrics.json").exists()


def test_classify_boxes_gives_each_labelled_box_a_distribution_over_the_categories(trained):
    out, train_json, _ = trained
    cfg = _cfg(out, train_json, 20)
    categories = task.detector_categories(cfg)
    scores = classify_boxes(
        task.load_detector(cfg, categories),
        CocoDetectionDataset(train_json),
        categories,
        batch_size=3,
    )
    gt = load_coco(train_json)
    assert len(scores) == 2 * len(gt["annotations"])  # the 2 negatives yield nothing
    by_box: dict = {}
    for entry in scores:
        assert entry["category_id"] in (10, 20) and 0.0 <= entry["score"] <= 1.0
        by_box.setdefault((entry["image_id"], tuple(entry["bbox"])), []).append(entry["score"])
    expected = {(a["image_id"], tuple(round(v, 2) for v in a["bbox"])) for a in gt["annotations"]}
    assert set(by_box) == expected
    for box_scores in by_box.values():
        assert sum(box_scores) == pytest.approx(1.0, abs=1e-4)


def name_clusters_with_tool(cfg, train_json: Path, tmp_path: Path) -> tuple[dict, dict]:
    """tools/match_clusters.py --detector-config on every box of `train_json` relabelled with
    real class ids 1, 2 (shape_k: 10 * (k + 1) -> k + 1); (summary, {cluster id: class id})."""
    cfg_path = save_config(cfg, tmp_path)
    labels = load_coco(train_json)
    labels["categories"] = [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    for ann in labels["annotations"]:
        ann["category_id"] //= 10
    labels_path = tmp_path / "labels.json"
    labels_path.write_text(json.dumps(labels))
    tool = runpy.run_path(str(CONFIG.parents[2] / "tools" / "match_clusters.py"), run_name="x")
    summary = tool["main"](
        ["--labels", str(labels_path), "--output", str(tmp_path / "mapping.json"),
         "--detector-config", str(cfg_path), "--image-dir", str(train_json.parent)]
    )  # fmt: skip
    clusters = json.loads((tmp_path / "mapping.json").read_text())["clusters"]
    return summary, {c["cluster_id"]: c["class_id"] for c in clusters}


def test_match_clusters_tool_names_clusters_from_box_votes_alone(trained, tmp_path):
    """--detector-config alone: each labelled box gives one unit of votes through the ROI head,
    and with K = C = 2 both clusters get a class (which one: the slow test below)."""
    out, train_json, _ = trained
    summary, mapping = name_clusters_with_tool(_cfg(out, train_json, 20), train_json, tmp_path)
    assert summary["clusters"] == 2 and summary["named_clusters"] == 2
    assert summary["relabelled_results"] is None  # nothing to rename was given
    assert not (tmp_path / "mapping_results.json").exists()
    assert summary["votes"] == pytest.approx(len(load_coco(train_json)["annotations"]), abs=1e-3)
    assert set(mapping) == {10, 20} and set(mapping.values()) == {1, 2}


def test_clear_errors_for_missing_inputs(tmp_path, shapes_coco):
    with pytest.raises(ConfigError, match="DATASETS.TRAIN_JSON is empty"):
        task.run(load_config(CONFIG, ["OUTPUT_DIR", str(tmp_path)]), _args())
    train_json = shapes_coco(num_images=2, negatives=2)
    with pytest.raises(CocoFormatError, match=r"train\.json: has no annotations"):
        task.run(_cfg(tmp_path / "none", train_json, 1), _args())
    with pytest.raises(CheckpointError, match="no detector weights"):
        task.run(_cfg(tmp_path / "empty", train_json, 1), _args(eval_only=True))


@pytest.mark.slow
def test_a_longer_run_detects_the_shapes(shapes_coco, tmp_path):
    """200 iterations (minutes on 2 cores): AP50 well above zero on an easy two-class set."""
    train_json = shapes_coco(num_images=24, num_classes=2, seed=1)
    cfg = _cfg(tmp_path, train_json, 200, "SOLVER.WARMUP_ITERS", "20")
    results = task.run(cfg, _args())
    assert results["AP50"] > 0.3
    # The trained ROI head, shown each true box, gives its class the larger probability.
    categories = task.detector_categories(cfg)
    scores = classify_boxes(
        task.load_detector(cfg, categories), CocoDetectionDataset(train_json), categories
    )
    true_class = {
        (a["image_id"], tuple(round(v, 2) for v in a["bbox"])): a["category_id"]
        for a in load_coco(train_json)["annotations"]
    }
    best: dict = {}
    for entry in scores:
        key = (entry["image_id"], tuple(entry["bbox"]))
        if entry["score"] > best.get(key, (None, -1.0))[1]:
            best[key] = (entry["category_id"], entry["score"])
    right = sum(best[key][0] == cls for key, cls in true_class.items())
    assert right >= 0.8 * len(true_class)
    # ... so the box votes alone name each cluster after its own class.
    _, mapping = name_clusters_with_tool(cfg, train_json, tmp_path / "naming")
    assert mapping == {10: 1, 20: 2}
