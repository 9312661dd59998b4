"""Clip preparation on real files, good and bad: manifest, failures, resume after a kill, the CLI."""

from __future__ import annotations

import importlib.util
import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avdet.data.indexes import ClipRecord, read_vggsound_csv
from avdet.data.prepare import (
    load_manifest,
    load_wav,
    prepare_clips,
    prepared_counts,
    read_exclude_report,
    rms_dbfs,
    save_wav,
)
from avdet.data.writer import write_av_clip

ROOT = Path(__file__).resolve().parents[2]

# clip id -> (make_clip keyword arguments, expected (height, width) of the prepared frame)
GOOD = {
    "mono16k": ({}, (48, 64)),
    "rate8k": ({"sample_rate": 8000}, (48, 64)),
    "stereo44k": ({"sample_rate": 44100, "channels": 2}, (48, 64)),
    "surround48k": ({"sample_rate": 48000, "channels": 6}, (48, 64)),
    "onepixel": ({"size": (1, 1), "n_frames": 5, "seconds": 1.0}, (2, 2)),
    "wide": ({"size": (20, 4000), "n_frames": 5, "seconds": 1.0}, (20, 4000)),
    "vfr": ({"n_frames": 4, "frame_times": [0.0, 0.3, 0.4, 0.95], "seconds": 1.0}, (48, 64)),
    # video from 0.5 s (audio from 0): the middle of its span is ~0.75 s
    "late": ({"n_frames": 5, "frame_times": [0.5, 0.6, 0.7, 0.8, 0.9], "seconds": 1.0}, (48, 64)),
}
BAD = {
    "truncated": "not a readable media file",
    "noaudio": "no audio stream",
    "audioonly": "no video stream",
    "zerobytes": "empty file (0 bytes)",
    "textfile": "not a readable media file",
    "silent": "silent audio (-inf dBFS)",
}


def _name(clip_id: str) -> str:
    return f"{clip_id}_000000.mp4"


@pytest.fixture
def dataset(tmp_path, make_clip) -> Path:
    """A VGGSound-layout folder with every kind of good and bad clip, plus one missing file."""
    video = tmp_path / "video"
    for clip_id, (kwargs, _) in GOOD.items():
        make_clip(f"video/{_name(clip_id)}", freq=440 + 100 * len(clip_id), **kwargs)
    data = (video / _name("mono16k")).read_bytes()
    (video / _name("truncated")).write_bytes(data[: len(data) // 2])
    make_clip(f"video/{_name('noaudio')}", audio=False)
    make_clip(f"video/{_name('audioonly')}", video=False)
    (video / _name("zerobytes")).write_bytes(b"")
    (video / _name("textfile")).write_text("not a video\n")
    frames = [np.full((48, 64, 3), 90, np.uint8)] * 25
    write_av_clip(video / _name("silent"), frames, np.zeros(16000, np.float32))
    rows = [f"{clip_id},0,label {clip_id},train" for clip_id in [*GOOD, *BAD]]
    rows.append("neverdownloaded,0,label,test")
    (tmp_path / "vggsound.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


def _load_cli():
    spec = importlib.util.spec_from_file_location(
        "prepare_clips_cli", ROOT / "datasets/prepare_clips.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_good_and_bad_clips(dataset, av_helpers, capsys):
    out = dataset / "prep"
    cli = _load_cli()
    argv = ["--csv", str(dataset / "vggsound.csv"), "--videos", str(dataset / "video")]
    assert cli.main([*argv, "--output", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "CSV rows left out, file not found: 1" in printed
    assert f"prepared now: {len(GOOD)}" in printed and f"failed now: {len(BAD)}" in printed

    manifest = load_manifest(out)
    assert [entry["clip_id"] for entry in manifest] == sorted(_name(c)[:-4] for c in GOOD)
    for entry in manifest:
        clip_id = entry["clip_id"].removesuffix("_000000")
        kwargs, (height, width) = GOOD[clip_id]
        assert entry["video"] == str((dataset / "video" / _name(clip_id)).resolve())
        assert entry["label"] == f"label {clip_id}" and entry["split"] == "train"
        assert (entry["height"], entry["width"]) == (height, width)
        assert entry["frame"] == f"frames/{entry['clip_id']}.jpg"
        frame = np.asarray(Image.open(out / entry["frame"]))
        assert frame.shape == (height, width, 3)
        times = kwargs.get("frame_times") or [i / 25 for i in range(kwargs.get("n_frames", 25))]
        assert entry["video_start"] == pytest.approx(times[0], abs=1e-3)
        middle = entry["video_start"] + entry["duration"] / 2
        shown = max(i for i, t in enumerate(times) if t <= middle + 1e-6)
        assert entry["frame_time"] == pytest.approx(times[shown], abs=1e-3)
        np.testing.assert_allclose(
            frame.reshape(-1, 3).mean(0), av_helpers.frame_colour(shown), atol=4
        )
        audio = load_wav(out / entry["audio"], 16000)
        assert len(audio) == entry["num_samples"] and entry["sample_rate"] == 16000
        seconds = kwargs.get("seconds", 1.0)
        assert seconds * 16000 <= len(audio) <= seconds * 16000 + 6000  # + AAC priming/padding
        freq = 440 + 100 * len(clip_id)
        middle = audio[2000 : int(seconds * 16000) - 2000]
        assert av_helpers.dominant_frequency(middle, 16000) == pytest.approx(freq, abs=4)
        assert entry["rms_dbfs"] == pytest.approx(rms_dbfs(audio), abs=0.1)

    failures = {
        row["clip_id"].removesuffix("_000000"): row for row in _read(out / "failures.jsonl")
    }
    assert set(failures) == set(BAD)
    for clip_id, reason in BAD.items():
        assert failures[clip_id]["reason"].startswith(reason), failures[clip_id]
        assert failures[clip_id]["path"] == str(dataset / "video" / _name(clip_id))
    written = {p.name for p in (out / "frames").iterdir()} | {
        p.name for p in (out / "audio").iterdir()
    }
    assert len(written) == 2 * len(GOOD)  # nothing for bad clips, no temp files


def test_second_run_redoes_nothing_and_a_killed_run_resumes(dataset):
    records, missing = read_vggsound_csv(dataset / "vggsound.csv", dataset / "video")
    assert len(records) == len(GOOD) + len(BAD) and len(missing) == 1
    out = dataset / "prep"
    first = prepare_clips(records, out, workers=1)
    assert (first.done, first.failed, first.skipped_existing) == (len(GOOD), len(BAD), 0)
    assert first.failed_by_reason == {
        "not a readable media file": 2,
        "no audio stream": 1,
        "no video stream": 1,
        "empty file": 1,
        "silent audio": 1,
    }
    manifest_text = (out / "manifest.jsonl").read_text()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}

    again = prepare_clips(records, out, workers=1)
    assert (again.done, again.failed, again.skipped_existing) == (0, 0, len(records))
    assert (out / "manifest.jsonl").read_text() == manifest_text
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    # The folder's counts cover every run, where this run's summary says "failed now: 0".
    assert prepared_counts(out) == {
        "prepared": len(GOOD),
        "failed": len(BAD),
        "failed_by_reason": first.failed_by_reason,
    }

    # A run killed mid-write: a torn last manifest line and a stray temp file; also a wav lost.
    lines = manifest_text.splitlines(keepends=True)
    torn_id = json.loads(lines[-1])["clip_id"]
    (out / "manifest.jsonl").write_text("".join(lines[:-1]) + lines[-1][:30])
    (out / "frames" / f".{torn_id}.jpg.abc123.tmp").write_bytes(b"partial")
    (out / ".manifest.jsonl.def456.tmp").write_text("{")
    lost_id = json.loads(lines[0])["clip_id"]
    (out / "audio" / f"{lost_id}.wav").unlink()

    resumed = prepare_clips(records, out, workers=1)
    assert (resumed.done, resumed.failed) == (2, 0)
    assert resumed.skipped_existing == len(records) - 2
    entries = load_manifest(out)
    assert sorted(e["clip_id"] for e in entries) == sorted(
        json.loads(line)["clip_id"] for line in lines
    )
    assert not list(out.rglob("*.tmp"))


def test_exclude_by_clip_id_or_file_name(dataset):
    records = [
        ClipRecord(c, dataset / "video" / _name(c), "", "") for c in ["mono16k", "rate8k", "wide"]
    ]
    summary = prepare_clips(records, dataset / "prep", workers=1, exclude={"wide", _name("rate8k")})
    assert (summary.excluded, summary.done) == (2, 1)
    assert [e["clip_id"] for e in load_manifest(dataset / "prep")] == ["mono16k"]


def test_repeated_clip_ids_are_refused(dataset):
    record = ClipRecord("same", dataset / "video" / _name("mono16k"), "", "")
    with pytest.raises(ValueError, match="repeated: same"):
        prepare_clips([record, record], dataset / "prep")


def test_cli_on_a_folder_of_videos(dataset, capsys):
    out = dataset / "prep"
    report = dataset / "report.json"
    report.write_text(
        json.dumps({"still": [_name("wide")], "duplicates": [[_name("rate8k"), _name("vfr")]]})
    )
    cli = _load_cli()
    assert (
        cli.main(
            [
                "--folder",
                str(dataset / "video"),
                "--output",
                str(out),
                "--workers",
                "1",
                "--exclude",
                str(report),
            ]
        )
        == 0
    )
    assert "excluded: 2" in capsys.readouterr().out
    prepared = {e["clip_id"] for e in load_manifest(out)}
    assert prepared == {_name(c)[:-4] for c in GOOD} - {_name("wide")[:-4], _name("vfr")[:-4]}
    with pytest.raises(SystemExit) as info:
        cli.parse_args(["--help"])
    assert info.value.code == 0
    assert "--exclude" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.parse_args(["--csv", "x.csv", "--output", str(out)])  # --csv needs --videos


def test_read_exclude_report(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(
        json.dumps(
            {
                "still": ["a.mp4"],
                "silent": [],
                "duplicates": [["keep.mp4", "drop.mp4"]],
                "split_overlap": [["train.mp4", "test.mp4"]],
                "threshold_dbfs": -60,
            }
        )
    )
    assert read_exclude_report(report) == {"a.mp4", "drop.mp4", "test.mp4"}


def test_wav_round_trip_and_windows(tmp_path):
    audio = (0.5 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    save_wav(tmp_path / "a.wav", audio, 16000)
    with wave.open(str(tmp_path / "a.wav")) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
    full = load_wav(tmp_path / "a.wav", 16000)
    np.testing.assert_allclose(full, audio, atol=1 / 32767)
    window = load_wav(tmp_path / "a.wav", start=-0.25, duration=0.5)
    assert len(window) == 8000 and not window[:4000].any()
    np.testing.assert_allclose(window[4000:], audio[:4000], atol=1 / 32767)
    np.testing.assert_allclose(
        load_wav(tmp_path / "a.wav", start=0.5, duration=0.25), audio[8000:12000], atol=1 / 32767
    )
    assert len(load_wav(tmp_path / "a.wav", start=0.9, duration=0.5)) == 8000
    with pytest.raises(ValueError, match="a.wav: sample rate 16000 Hz, expected 8000 Hz"):
        load_wav(tmp_path / "a.wav", 8000)
    assert rms_dbfs(np.zeros(10, np.float32)) == -np.inf
    assert rms_dbfs(np.full(10, 0.1, np.float32)) == pytest.approx(-20.0)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]
