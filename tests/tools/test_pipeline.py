"""The whole pipeline on the tiny toy set (slow): every stage runs, report written, a rerun resumes."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

TINY = [
    "DEVICE", "cpu",
    "DATASETS.TOY.PRESET", "tiny",
    "DATASETS.TOY.NUM_CLASSES", "3",
    "MODEL.NUM_CLUSTERS", "3",
    "DATALOADER.NUM_WORKERS", "0",
    "PIPELINE.LABEL_SWEEP", "(1, 0)",  # 0: every labelled train image
    "PIPELINE.AV_OPTS",
    "('SOLVER.MAX_ITER', '6', 'SELFLABEL.START_ITER', '2', 'SOLVER.IMS_PER_BATCH', '8', 'TEST.NUM_VIS', '4')",
    "PIPELINE.DETECTOR_OPTS", "('SOLVER.MAX_ITER', '4', 'SOLVER.IMS_PER_BATCH', '4')",
]  # fmt: skip


def run(*opts: str) -> dict:
    main = runpy.run_path(str(ROOT / "tools" / "run_pipeline.py"), run_name="not_main")["main"]
    return main(["--config-file", str(ROOT / "configs" / "toy" / "pipeline.yaml"), *opts])


@pytest.mark.slow
def test_pipeline_end_to_end_and_resume(toy_root, tmp_path):
    out = tmp_path / "run"
    opts = ["OUTPUT_DIR", str(out), "DATASETS.TOY.ROOT", str(toy_root), *TINY]
    summary = run(*opts)
    report = json.loads((out / "report.json").read_text())
    for key in ("map50_selfsup", "map50_supervised", "map50_gt_classes", "map50_agnostic",
                "ciou50", "auc", "nmi", "accuracy", "wall_seconds"):  # fmt: skip
        assert key in report, key
    for key in ("map50_selfsup", "map50_supervised", "ciou50", "nmi"):
        assert 0.0 <= report[key] <= 1.0, key
    assert summary["map50_supervised"] == report["map50_supervised"]
    assert set(report["label_sweep"]) == {"1", "all"}
    train_images = json.loads((out / "gt" / "instances_train.json").read_text())["images"]
    assert report["label_sweep"]["all"]["labelled_images"] == len(train_images)
    markdown = (out / "report.md").read_text()
    assert "mAP@0.5" in markdown
    assert markdown.index("\n| 1 | ") < markdown.index("\n| all | ")
    for path in ("av/model_final.pth", "pseudo/pseudo_train.json", "detector/model_final.pth",
                 "detector/naming/mapping.json", "detector/naming/detections.png",
                 "baseline_supervised/model_final.pth", "gt/labels_1.json"):  # fmt: skip
        assert (out / path).exists(), path
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model_final.pth")}
    again = run(*opts)  # everything is there: no stage retrains
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model_final.pth")} == stamps
    assert again["map50_selfsup"] == pytest.approx(summary["map50_selfsup"])
