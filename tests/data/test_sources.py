"""Preparing a data source: what ensure_prepared logs, and once per prepared_once block."""

from __future__ import annotations

import logging

import pytest

from avdet.config import CfgNode, load_config
from avdet.data.sources import ensure_prepared, prepared_once


@pytest.fixture
def cfg(tmp_path, make_clip) -> CfgNode:
    """A VGGSound-layout set: two good clips, one without audio, a CSV row whose video is missing
    and a malformed row."""
    for clip_id in ("good1", "good2"):
        make_clip(f"video/{clip_id}_000000.mp4", n_frames=5)
    make_clip("video/mute_000000.mp4", n_frames=5, audio=False)
    csv = tmp_path / "clips.csv"
    csv.write_text("good1,0,a,train\ngood2,0,b,test\nmute,0,a,train\ngone,0,a,train\nbad row\n")
    return load_config(
        None,
        [
            "OUTPUT_DIR", str(tmp_path / "out"),
            "DATASETS.CSV", str(csv),
            "DATASETS.VIDEO_DIR", str(tmp_path / "video"),
            "DATALOADER.PREPARE_WORKERS", "1",
        ],
    )  # fmt: skip


def _messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_ensure_prepared_logs_the_csv_problems_and_the_summary_once(cfg, avdet_caplog):
    source = ensure_prepared(cfg)
    # The CSV reader's warning only: it tells missing files from bad rows.
    warnings = [r.getMessage() for r in avdet_caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"{source.csv}: 3 clips found, 1 files missing, 1 bad rows"]
    assert len(_messages(avdet_caplog, "prepared now: 2")) == 1


def test_inside_prepared_once_ensure_prepared_does_nothing(cfg, avdet_caplog):
    with prepared_once(cfg) as source:
        assert len(_messages(avdet_caplog, "prepared now: 2")) == 1
        avdet_caplog.clear()
        assert ensure_prepared(cfg) == source  # what a stage run inside the block calls
        assert not [r for r in avdet_caplog.records if r.levelno >= logging.INFO]
    avdet_caplog.clear()
    ensure_prepared(cfg)  # after the block the folder is checked (and logged) again
    assert len(_messages(avdet_caplog, "already done (skipped): 3")) == 1
