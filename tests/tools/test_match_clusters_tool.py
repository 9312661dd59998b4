"""tools/match_clusters.py end to end on real COCO files: mapping, relabelled results, bad input."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "match_clusters.py"


def run_tool(*args: str) -> dict:
    return runpy.run_path(str(TOOL), run_name="not_main")["main"](list(args))


def write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


LABELS = {
    "images": [{"id": i, "file_name": f"f{i}.jpg", "width": 100, "height": 100} for i in (1, 2, 3)],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 30, 30]},
        {"id": 2, "image_id": 2, "category_id": 9, "bbox": [50, 50, 40, 40]},
        {"id": 3, "image_id": 3, "category_id": 7, "bbox": [0, 0, 20, 20]},
    ],
    "categories": [{"id": 7, "name": "drum"}, {"id": 9, "name": "bell"}],
}


def test_clusters_get_the_class_they_agree_with(tmp_path):
    detections = [
        {"image_id": 1, "category_id": 2, "bbox": [11, 10, 30, 30], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [50, 52, 40, 40], "score": 0.8},
        {"image_id": 3, "category_id": 2, "bbox": [0, 0, 21, 20], "score": 0.7},
        {"image_id": 3, "category_id": 3, "bbox": [60, 60, 10, 10], "score": 0.6},  # no match
    ]
    out = tmp_path / "mapping.json"
    summary = run_tool(
        "--detections", str(write(tmp_path / "d.json", detections)),
        "--labels", str(write(tmp_path / "l.json", LABELS)),
        "--output", str(out),
    )  # fmt: skip
    mapping = {c["cluster_id"]: c["class_name"] for c in json.loads(out.read_text())["clusters"]}
    assert mapping == {1: "bell", 2: "drum", 3: None}
    relabelled = json.loads((tmp_path / "mapping_results.json").read_text())
    assert [d["category_id"] for d in relabelled] == [7, 9, 7]  # cluster 3 dropped
    assert summary["named_clusters"] == 2 and summary["votes"] == pytest.approx(0.9 + 0.8 + 0.7)

    run_tool(
        "--detections", str(tmp_path / "d.json"), "--labels", str(tmp_path / "l.json"),
        "--output", str(out), "--keep-unmatched", "unknown",
    )  # fmt: skip
    relabelled = json.loads((tmp_path / "mapping_results.json").read_text())
    assert [d["category_id"] for d in relabelled] == [7, 9, 7, 10]  # unknown: a new id


def test_bad_inputs_are_clear_errors(tmp_path):
    detections = write(
        tmp_path / "d.json",
        [{"image_id": 1, "category_id": 1, "bbox": [80, 80, 5, 5], "score": 1.0}],
    )
    labels = write(tmp_path / "l.json", LABELS)
    with pytest.raises(SystemExit, match="no detection overlaps a labelled box"):
        run_tool(
            "--detections",
            str(detections),
            "--labels",
            str(labels),
            "--output",
            str(tmp_path / "m.json"),
        )
    empty = write(tmp_path / "empty.json", {**LABELS, "annotations": []})
    with pytest.raises(SystemExit, match="no labelled boxes"):
        run_tool(
            "--detections",
            str(detections),
            "--labels",
            str(empty),
            "--output",
            str(tmp_path / "m.json"),
        )
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(SystemExit, match="broken.json: cannot read detections"):
        run_tool(
            "--detections",
            str(broken),
            "--labels",
            str(labels),
            "--output",
            str(tmp_path / "m.json"),
        )
    with pytest.raises(SystemExit, match="--votes matched takes one detection per labelled box"):
        run_tool(
            "--labels", str(labels), "--output", str(tmp_path / "m.json"),
            "--detector-config", str(tmp_path / "config.yaml"), "--votes", "matched",
        )  # fmt: skip
    with pytest.raises(SystemExit, match="give --detections, --detector-config or both"):
        run_tool("--labels", str(labels), "--output", str(tmp_path / "m.json"))
    assert not (tmp_path / "m.json").exists()
