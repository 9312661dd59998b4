"""How the pipeline takes its data: the GT re-keyed to the prepared frames, the clip counts in
the report, and the clips prepared once per run."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from avdet import pipeline
from avdet.config import load_config
from avdet.data import prepare
from avdet.data.coco import save_coco
from avdet.data.writer import write_av_clip
from avdet.models.av_task import prepare_data
from avdet.pipeline import Pipeline, clips_line, frames_coco

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "toy" / "pipeline.yaml"
PREPARED = ["a_000001", "b_000003"]
MANIFEST = [
    {"video": f"/data/video/{clip_id}.mp4", "frame": f"frames/{clip_id}.jpg", "clip_id": clip_id}
    for clip_id in PREPARED
]


def _gt(*file_names: str) -> dict:
    """COCO with one 48x64 image per file name and one box on each."""
    ids = range(1, len(file_names) + 1)
    return {
        "images": [
            {"id": i, "file_name": name, "width": 64, "height": 48}
            for i, name in zip(ids, file_names, strict=True)
        ],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [1, 2, 10, 10], "area": 100.0}
            for i in ids
        ],
        "categories": [{"id": 1, "name": "drum"}],
    }


def test_gt_images_without_a_prepared_clip_are_left_out_with_a_warning(avdet_caplog):
    gt = _gt("a_000001.mp4", "broken_000002.mp4", "b_000003.mp4", "gone_000004.mp4")
    frames = frames_coco(gt, MANIFEST, "gt/instances_train.json")
    assert [i["clip_id"] for i in frames["images"]] == PREPARED
    assert [i["file_name"] for i in frames["images"]] == [f"frames/{c}.jpg" for c in PREPARED]
    assert [a["image_id"] for a in frames["annotations"]] == [1, 3]
    warnings = [r.getMessage() for r in avdet_caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].startswith("gt/instances_train.json: 2 of 4 GT images have no prepared clip")
    assert warnings[0].endswith("e.g. broken_000002.mp4, gone_000004.mp4")


def test_gt_that_matches_no_prepared_clip_is_a_clear_error():
    gt = _gt("video/a_000001.mp4", "b.jpg")  # keyed by path or by frame: not by video file name
    with pytest.raises(ValueError, match="none of its 2 images is a prepared clip") as info:
        frames_coco(gt, MANIFEST, "gt/instances_test.json")
    message = str(info.value)
    for part in (
        "gt/instances_test.json:",
        "<youtube_id>_<start:06d>.mp4 as in the CSV",
        "the GT has 'video/a_000001.mp4'",
        "a prepared clip is 'a_000001.mp4'",
    ):
        assert part in message, part


def test_the_report_line_counts_prepared_and_skipped_clips():
    clips = {
        "prepared": 12,
        "failed": 3,
        "failed_by_reason": {"no audio stream": 1, "not a readable media file": 2},
        "failures_file": "out/prepared/failures.jsonl",
    }
    assert clips_line(clips) == (
        "Clips: 12 prepared, 3 skipped (no audio stream: 1, not a readable media file: 2; "
        "listed in `out/prepared/failures.jsonl`)."
    )
    assert clips_line({**clips, "failed": 0, "failed_by_reason": {}}) == (
        "Clips: 12 prepared, 0 skipped."
    )


class _Stop(Exception):
    """Raised by the stand-in for stage 1 once it has prepared its data."""


def test_a_run_prepares_the_clips_once(tmp_path, monkeypatch):
    splits = {"train": ["a_000001.mp4", "b_000002.mp4"], "test": ["c_000003.mp4"]}
    frames = [np.full((32, 32, 3), 40 * i, np.uint8) for i in range(5)]
    sound = 0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 16000)
    rows = []
    for split, names in splits.items():
        for name in names:
            write_av_clip(tmp_path / "video" / name, frames, sound, fps=10)
            youtube_id, start = name.removesuffix(".mp4").rsplit("_", 1)
            rows.append(f"{youtube_id},{int(start)},drum,{split}\n")
        save_coco(tmp_path / "gt" / f"instances_{split}.json", _gt(*names))
    (tmp_path / "clips.csv").write_text("".join(rows))
    cfg = load_config(
        CONFIG,
        [
            "OUTPUT_DIR", str(tmp_path / "run"),
            "DATASETS.CSV", str(tmp_path / "clips.csv"),
            "DATASETS.VIDEO_DIR", str(tmp_path / "video"),
            "DATASETS.ANNOTATION_DIR", str(tmp_path / "gt"),
            "DATALOADER.PREPARE_WORKERS", "1",
            "PIPELINE.LABEL_SWEEP", "(1,)",
            "PIPELINE.AV_OPTS", "('INPUT.AUDIO.SAMPLE_RATE', '8000')",
        ],
    )  # fmt: skip
    calls, prepare_clips = [], prepare.prepare_clips
    monkeypatch.setattr(
        prepare,
        "prepare_clips",
        lambda *a, **k: calls.append((a[1], k["sample_rate"])) or prepare_clips(*a, **k),
    )

    def stage_1(stage_cfg, args):
        prepare_data(stage_cfg)  # what the real stage 1 does before it trains
        raise _Stop

    monkeypatch.setattr(pipeline, "get_task", lambda name: stage_1)
    monkeypatch.setattr(pipeline, "default_setup", lambda stage_cfg: None)  # no log files
    with pytest.raises(_Stop):
        Pipeline(cfg, CONFIG).run()
    # once, at the audio rate stage 1 reads the wavs with (its config's, not the pipeline's)
    assert calls == [(tmp_path / "run" / "prepared", 8000)]
    assert (tmp_path / "run" / "gt" / "instances_test.json").is_file()


@pytest.mark.parametrize("clusters, warned", [(2, True), (3, False), (6, False)])
def test_fewer_clusters_than_classes_is_warned(tmp_path, avdet_caplog, clusters, warned):
    gt = _gt("a_000001.mp4", "b_000003.mp4", "c_000005.mp4", "d_000007.mp4")
    for annotation, category_id in zip(gt["annotations"], (1, 2, 3, 3), strict=True):
        annotation["category_id"] = category_id
    gt["categories"] += [
        {"id": 2, "name": "dog"},
        {"id": 3, "name": "bell"},
        {"id": 4, "name": "owl"},
    ]
    path = save_coco(tmp_path / "instances_train.json", gt)
    cfg = load_config(CONFIG, ["OUTPUT_DIR", str(tmp_path), "MODEL.NUM_CLUSTERS", str(clusters)])
    Pipeline(cfg, CONFIG).check_cluster_count(gt, path)
    warnings = [r.getMessage() for r in avdet_caplog.records if r.levelno == logging.WARNING]
    if warned:  # 3 classes have boxes; the category without any does not count
        assert warnings == [
            f"MODEL.NUM_CLUSTERS 2 is below the 3 classes boxed in {path}: at most 2 of them can "
            "be named; set MODEL.NUM_CLUSTERS 3 (or more, to over-cluster)"
        ]
    else:
        assert not warnings
