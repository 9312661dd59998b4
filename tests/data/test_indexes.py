"""Clip indexes: the VGGSound CSV (missing files, bad rows, quoted labels) and video folders."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from avdet.data.indexes import ClipRecord, index_video_folder, read_vggsound_csv


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_read_vggsound_csv(tmp_path, caplog):
    videos = tmp_path / "video"
    _touch(videos / "abc_000010.mp4")
    _touch(videos / "-dA3_000000.mp4")
    _touch(videos / "zzz_000030.mp4")
    csv_path = tmp_path / "vggsound.csv"
    csv_path.write_text(
        "abc,10,dog barking,train\n"
        "\n"
        '-dA3,0,"playing guitar, acoustic",test\n'
        "gone,20,cat meowing,train\n"
        "short,5,train\n"
        "xyz,1.5,cat,train\n"
        "abc,10,dog barking,test\n"
        "zzz,30,horse,val\n"
    )
    with caplog.at_level(logging.WARNING):
        records, problems = read_vggsound_csv(csv_path, videos)
    assert records == [
        ClipRecord("abc_000010", videos / "abc_000010.mp4", "dog barking", "train", 10.0),
        ClipRecord("-dA3_000000", videos / "-dA3_000000.mp4", "playing guitar, acoustic", "test"),
        ClipRecord("zzz_000030", videos / "zzz_000030.mp4", "horse", "val", 30.0),
    ]
    assert problems == [
        {"path": str(videos / "gone_000020.mp4"), "reason": "file not found (CSV line 4)"},
        {"path": f"{csv_path}:5", "reason": "bad row: expected 4 columns, got 3"},
        {"path": f"{csv_path}:6", "reason": "bad row: start '1.5' is not an integer"},
        {"path": f"{csv_path}:7", "reason": "bad row: clip abc_000010 repeats line 1"},
    ]
    assert "3 clips found, 1 files missing, 3 bad rows" in caplog.text

    train, problems = read_vggsound_csv(csv_path, videos, splits=["train", "val"])
    assert [r.clip_id for r in train] == ["abc_000010", "zzz_000030"]
    assert len(problems) == 3  # the repeated row is in "test", filtered out before the check


def test_index_video_folder(tmp_path):
    root = tmp_path / "videos"
    for name in ["dog/b.mp4", "dog/a.MKV", "cat/deep/c.webm", "top.avi", "x/y.mov", "x/y.mp4"]:
        _touch(root / name)
    _touch(root / "dog/notes.txt")
    records = index_video_folder(root)
    assert [(r.clip_id, r.label, r.split) for r in records] == [
        ("cat__deep__c", "deep", ""),
        ("dog__a", "dog", ""),
        ("dog__b", "dog", ""),
        ("top", "", ""),
        ("x__y_mov", "x", ""),
        ("x__y_mp4", "x", ""),
    ]
    assert records[1].path == root / "dog/a.MKV"
    assert {r.label for r in index_video_folder(root, label_from_parent=False)} == {""}
    with pytest.raises(NotADirectoryError, match="nowhere"):
        index_video_folder(tmp_path / "nowhere")


def test_load_clip_records_needs_a_csv_or_a_folder(tmp_path):
    from avdet.data.indexes import load_clip_records

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.mp4").write_bytes(b"")
    records, problems = load_clip_records(folder=tmp_path)
    assert [r.clip_id for r in records] == ["a__x"] and problems == []
    with pytest.raises(ValueError, match="give a CSV"):
        load_clip_records()
