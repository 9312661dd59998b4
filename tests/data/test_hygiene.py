"""Clip hygiene on real mp4 files: still, silent, short, unreadable, duplicates across splits,
resuming from the cache, the CLI, and the fingerprints and LSH search on arrays."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from avdet.data import hygiene
from avdet.data.indexes import read_vggsound_csv
from avdet.data.prepare import read_exclude_report
from avdet.data.video import read_audio
from avdet.data.writer import write_av_clip

ROOT = Path(__file__).resolve().parents[2]
SIZE = (48, 64)
FPS = 25


def _name(clip_id: str) -> str:
    return f"{clip_id}_000000.mp4"


def _texture(seed: int, size: tuple[int, int] = (72, 96)) -> np.ndarray:
    """A smooth random RGB image [H, W, 3] uint8 (cubic upsampling of a coarse grid)."""
    coarse = np.random.default_rng(seed).integers(0, 256, (size[0] // 8, size[1] // 8, 3))
    return cv2.resize(coarse.astype(np.uint8), size[::-1], interpolation=cv2.INTER_CUBIC)


def _panning(seed: int, n_frames: int) -> list[np.ndarray]:
    """Frames of a camera panning over a texture: [48, 64, 3] each, one pixel per frame."""
    image = _texture(seed)
    return [image[i // 2 : i // 2 + SIZE[0], i : i + SIZE[1]].copy() for i in range(n_frames)]


def _sound(seed: int, seconds: float, sample_rate: int = 16000) -> np.ndarray:
    """[T] float32: a tone that jumps to a random pitch and level every 0.1 s, over soft noise."""
    rng = np.random.default_rng(seed)
    steps = int(np.ceil(seconds * 10))
    freqs = np.repeat(rng.uniform(300, 3000, steps), sample_rate // 10)
    levels = np.repeat(rng.uniform(0.05, 0.4, steps), sample_rate // 10)
    n = round(seconds * sample_rate)
    phase = 2 * np.pi * np.cumsum(freqs[:n]) / sample_rate
    noise = 0.02 * rng.standard_normal(n)
    return (levels[:n] * np.sin(phase) + noise).astype(np.float32)


def _write(path: Path, frames, audio, **kwargs) -> Path:
    return write_av_clip(path, frames, audio, fps=FPS, **kwargs)


def _reencode(src: Path, dst: Path, size: tuple[int, int], crf: int, sample_rate: int) -> Path:
    """A copy of `src` decoded and encoded again: frames resized to `size` (H, W), x264 at `crf`,
    audio resampled to `sample_rate` and AAC-encoded again."""
    with av.open(str(src)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    resized = [cv2.resize(f, size[::-1], interpolation=cv2.INTER_AREA) for f in frames]
    audio = read_audio(src, sample_rate)
    return _write(dst, resized, audio, crf=crf, sample_rate=sample_rate)


# clip id -> split; every clip is 1.6 s of 64x48 video unless said otherwise
SPLITS = {
    "panA": "train",  # the original of `copyA`
    "panB": "train",  # a different clip
    "copyA": "test",  # panA re-encoded (crf 35), resized to 96x72, audio at 22.05 kHz
    "dubbedA": "val",  # panA's frames with another sound: looks the same, is not a duplicate
    "still": "train",  # one image in every frame
    "silent": "train",  # digital silence
    "short": "train",  # 0.32 s
    "textfile": "train",  # not a video
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A VGGSound-layout folder (vggsound.csv + video/) with one clip of each kind above."""
    root = tmp_path_factory.mktemp("hygiene")
    video = root / "video"
    n = round(1.6 * FPS)
    pan_a = _write(video / _name("panA"), _panning(1, n), _sound(1, 1.6))
    _write(video / _name("panB"), _panning(2, n), _sound(2, 1.6))
    _reencode(pan_a, video / _name("copyA"), size=(72, 96), crf=35, sample_rate=22050)
    _write(video / _name("dubbedA"), _panning(1, n), _sound(3, 1.6))
    _write(video / _name("still"), [_texture(4)[: SIZE[0], : SIZE[1]]] * n, _sound(4, 1.6))
    _write(video / _name("silent"), _panning(5, n), np.zeros(round(1.6 * 16000), np.float32))
    _write(video / _name("short"), _panning(6, 8), _sound(6, 0.32))
    (video / _name("textfile")).write_text("not a video\n")
    rows = [f"{clip_id},0,label,{split}" for clip_id, split in SPLITS.items()]
    (root / "vggsound.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def report(dataset) -> dict:
    records, problems = read_vggsound_csv(dataset / "vggsound.csv", dataset / "video")
    assert len(records) == len(SPLITS) and not problems
    return hygiene.check_clips(records, dataset / "REPORT.json", workers=1)


def test_each_flag_catches_its_clip_and_only_it(dataset, report):
    assert report["still"] == [_name("still")]
    assert report["silent"] == [_name("silent")]
    assert report["short"] == [_name("short")]
    assert report["unreadable"] == [_name("textfile")]
    assert report["unreadable_reasons"][_name("textfile")].startswith("not a readable media file")
    assert report["counts"] == {
        "clips": 8,
        "still": 1,
        "silent": 1,
        "short": 1,
        "unreadable": 1,
        "duplicates": 1,
        "split_overlap": 1,
    }
    assert report["thresholds"]["min_rms_dbfs"] == -60.0
    assert json.loads((dataset / "REPORT.json").read_text()) == report


def test_reencoded_resized_copy_in_test_is_a_duplicate_across_splits(report):
    # The test copy is kept and the train original excluded: the evaluation split stays whole.
    assert report["duplicates"] == [[_name("copyA"), _name("panA")]]
    assert report["split_overlap"] == [[_name("copyA"), _name("panA")]]


def test_same_frames_with_another_sound_or_other_clips_are_not_duplicates(dataset):
    cache = dataset / "REPORT.json.partial.jsonl"
    rows = {Path(row["path"]).name: row for row in map(json.loads, cache.read_text().splitlines())}

    def hashes(name: str) -> np.ndarray:
        return np.array([int(h, 16) for h in rows[name]["frame_hashes"]], dtype=np.uint64)

    def fingerprint(name: str) -> np.ndarray:
        return hygiene.decode_fingerprint(rows[name]["audio_fingerprint"])

    def frame_bits(a: str, b: str) -> float:
        return float(
            np.mean(
                [bin(int(x) ^ int(y)).count("1") for x, y in zip(hashes(a), hashes(b), strict=True)]
            )
        )

    a, copy, dubbed, other = (_name(c) for c in ("panA", "copyA", "dubbedA", "panB"))
    assert frame_bits(a, copy) <= 4 and frame_bits(a, dubbed) <= 4  # all three look alike
    assert frame_bits(a, other) >= 16
    assert hygiene.fingerprint_distance(fingerprint(a), fingerprint(copy)) < 0.15
    assert hygiene.fingerprint_distance(fingerprint(a), fingerprint(dubbed)) > 0.35


def test_report_loads_with_read_exclude_report(dataset, report):
    excluded = read_exclude_report(dataset / "REPORT.json")
    bad = {_name(c) for c in ("still", "silent", "short", "textfile")}
    assert excluded == bad | {_name("panA")}


def _small_dataset(root: Path) -> list:
    video = root / "video"
    _write(video / _name("a"), _panning(1, 25), _sound(1, 1.0))
    _write(video / _name("b"), _panning(2, 25), _sound(2, 1.0))
    _write(video / _name("c"), _panning(3, 25), _sound(3, 1.0))
    (video / _name("d")).write_text("not a video\n")
    (root / "clips.csv").write_text("".join(f"{c},0,x,train\n" for c in "abcd"))
    return read_vggsound_csv(root / "clips.csv", video)[0]


def test_a_killed_run_resumes_and_a_rerun_measures_nothing(tmp_path, monkeypatch):
    records = _small_dataset(tmp_path)
    report_path = tmp_path / "out" / "REPORT.json"
    cache = tmp_path / "out" / "REPORT.json.partial.jsonl"
    measure = hygiene.measure_clip
    calls: list[str] = []

    def killed_after_two(path, frames_per_clip):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(Path(path).name)
        return measure(path, frames_per_clip)

    monkeypatch.setattr(hygiene, "measure_clip", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        hygiene.check_clips(records, report_path, workers=1)
    assert not report_path.exists() and len(cache.read_text().splitlines()) == 2
    with open(cache, "a") as handle:  # and the kill tore a third line
        handle.write('{"path": "/x", "fi')

    def counted(path, frames_per_clip):
        calls.append(Path(path).name)
        return measure(path, frames_per_clip)

    monkeypatch.setattr(hygiene, "measure_clip", counted)
    first = hygiene.check_clips(records, report_path, workers=1)
    assert sorted(calls) == sorted(_name(c) for c in "abcd")  # each clip measured once in all
    assert first["unreadable"] == [_name("d")] and first["short"] == []
    assert [json.loads(line)["path"] for line in cache.read_text().splitlines()]  # no torn line

    def fail(path, frames_per_clip):
        raise AssertionError(f"{path} measured again")

    monkeypatch.setattr(hygiene, "measure_clip", fail)
    again = hygiene.check_clips(records, report_path, workers=1, min_duration=2.0)
    assert again["short"] == [_name(c) for c in "abc"]  # new thresholds, cached measurements
    assert again["thresholds"]["min_duration"] == 2.0

    _write(tmp_path / "video" / _name("b"), [_texture(9)[:48, :64]] * 25, _sound(2, 1.0))
    calls.clear()
    monkeypatch.setattr(hygiene, "measure_clip", counted)
    changed = hygiene.check_clips(records, report_path, workers=1)
    assert calls == [_name("b")]  # only the file that changed is measured again
    assert changed["still"] == [_name("b")]


def test_a_video_that_starts_late_is_measured_over_its_own_span(tmp_path, monkeypatch):
    # Video from 1.0 s to 2.0 s, audio from 0: the duration is the video's length (1.0 s, not its
    # end time) and the K frames lie at (i + 0.5) / K of [1.0, 2.0].
    times = [1.0 + i / FPS for i in range(FPS)]
    path = _write(tmp_path / "late.mp4", _panning(1, FPS), _sound(1, 2.0), frame_times=times)
    read_frame, asked = hygiene.read_frame, []
    monkeypatch.setattr(hygiene, "read_frame", lambda p, t: asked.append(t) or read_frame(p, t))
    row = hygiene.measure_clip(path, frames_per_clip=4)
    assert row["duration"] == pytest.approx(1.0)
    assert asked == pytest.approx([1.125, 1.375, 1.625, 1.875])


def _load_cli():
    spec = importlib.util.spec_from_file_location("check_clips", ROOT / "datasets/check_clips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_on_a_csv_then_on_a_folder(tmp_path, monkeypatch, capsys):
    records = _small_dataset(tmp_path)
    _reencode(records[0].path, tmp_path / "video" / "sub" / "copy.mp4", (72, 96), 30, 16000)
    cli = _load_cli()
    output = tmp_path / "REPORT.json"
    argv = ["--output", str(output), "--workers", "1", "--min-duration", "1.5"]
    csv = ["--csv", str(tmp_path / "clips.csv"), "--videos", str(tmp_path / "video")]
    assert cli.main([*csv, *argv]) == 0
    printed = capsys.readouterr().out
    assert "clips checked: 4" in printed and "short: 3" in printed and "unreadable: 1" in printed
    assert json.loads(output.read_text())["short"] == [_name(c) for c in "abc"]

    # A folder of videos: the measurements of the CSV run are reused (the cache is keyed by
    # file), the copy in a subfolder is named by its clip id, and without splits no overlap.
    measure, calls = hygiene.measure_clip, []
    monkeypatch.setattr(hygiene, "measure_clip", lambda p, k: calls.append(p) or measure(p, k))
    assert cli.main(["--folder", str(tmp_path / "video"), *argv]) == 0
    assert [Path(path).name for path in calls] == ["copy.mp4"]
    report = json.loads(output.read_text())
    assert report["duplicates"] == [[_name("a"), "sub__copy"]]
    assert report["split_overlap"] == []
    assert read_exclude_report(output) == {_name(c) for c in "abcd"} | {"sub__copy"}
    with pytest.raises(SystemExit):
        cli.parse_args(["--csv", "x.csv", "--output", str(output)])  # --csv needs --videos


def test_audio_fingerprint_survives_delay_gain_and_noise():
    rng = np.random.default_rng(0)
    audio = _sound(7, 3.0)
    delayed = np.pad(audio, (600, 0))[: len(audio)]  # 37.5 ms, about AAC's priming delay
    degraded = 0.4 * delayed + 0.002 * rng.standard_normal(len(audio)).astype(np.float32)
    print_a = hygiene.audio_fingerprint(audio)
    assert print_a.dtype == np.uint32 and len(print_a) == 1 + (48000 - 6144) // 800 - 1
    assert hygiene.fingerprint_distance(print_a, hygiene.audio_fingerprint(degraded)) < 0.15
    other = hygiene.audio_fingerprint(_sound(8, 3.0))
    assert hygiene.fingerprint_distance(print_a, other) > 0.4
    assert not hygiene.audio_fingerprint(np.zeros(48000, np.float32)).any()
    assert len(hygiene.audio_fingerprint(np.zeros(1000, np.float32))) == 0
    assert hygiene.fingerprint_distance(print_a, print_a[:0]) == 1.0
    text = hygiene.encode_fingerprint(print_a)
    np.testing.assert_array_equal(hygiene.decode_fingerprint(text), print_a)


def test_perceptual_hash_survives_resizing_and_noise_and_tells_images_apart():
    image = _texture(3, (180, 240))
    rng = np.random.default_rng(0)
    small = cv2.resize(image, (96, 72), interpolation=cv2.INTER_AREA)
    noisy = np.clip(small + rng.normal(0, 6, small.shape), 0, 255).astype(np.uint8)

    def bits(a: np.ndarray, b: np.ndarray) -> int:
        ha, hb = (hygiene.perceptual_hash(hygiene.thumbnail(x)) for x in (a, b))
        return bin(ha ^ hb).count("1")

    assert bits(image, noisy) <= 4
    assert bits(image, _texture(4, (180, 240))) >= 16
    assert hygiene.perceptual_hash(hygiene.thumbnail(np.full((48, 64, 3), 7, np.uint8))) == 0
    thumbs = [hygiene.thumbnail(image), hygiene.thumbnail(image)]
    assert hygiene.motion_score(thumbs) == 0.0
    shifted = hygiene.thumbnail(np.roll(image, 8, axis=1))
    assert hygiene.motion_score([*thumbs, shifted]) > 1.0


def test_lsh_search_finds_what_brute_force_finds():
    rng = np.random.default_rng(0)
    n, k = 1000, 4
    hashes = rng.integers(0, 2**64, size=(n, k), dtype=np.uint64)
    prints = [rng.integers(0, 2**32, size=40, dtype=np.uint32) for _ in range(n)]
    for copy in range(0, 200, 2):  # 100 copies of clip + 1 with up to 5 bits flipped per frame
        flips = [sum(1 << int(b) for b in rng.choice(64, rng.integers(0, 6), replace=False))]
        hashes[copy] = hashes[copy + 1] ^ np.array(flips * k, dtype=np.uint64)
        # half of them sound alike (3% of the bits flipped), half sound different
        noise = (rng.random((40, 32)) < 0.03) if copy % 4 else (rng.random((40, 32)) < 0.5)
        flipped = np.packbits(noise, axis=1, bitorder="little").view("<u4").ravel()
        prints[copy] = prints[copy + 1] ^ flipped

    pairs = hygiene.find_duplicates(hashes, prints)
    brute = []
    for i in range(n):
        differ = np.unpackbits((hashes[i + 1 :] ^ hashes[i]).view(np.uint8), axis=1)
        bits_apart = differ.reshape(-1, k, 64).sum(-1).mean(axis=1)
        for j in np.flatnonzero(bits_apart <= hygiene.MAX_FRAME_DISTANCE) + i + 1:
            if hygiene.fingerprint_distance(prints[i], prints[j]) <= hygiene.MAX_AUDIO_DISTANCE:
                brute.append((i, int(j)))
    assert sorted(map(tuple, pairs.tolist())) == sorted(brute)
    assert len(brute) == 50


def test_oversized_buckets_are_skipped_with_a_warning(caplog):
    blank = np.zeros((5, 4), dtype=np.uint64)
    with caplog.at_level(logging.WARNING):
        none = hygiene.lsh_candidates(blank.astype(">u8"), tables=2, key_bits=8, max_bucket=4)
    assert len(none) == 0 and "buckets of more than 4 clips" in caplog.text
    every = hygiene.lsh_candidates(blank.astype(">u8"), tables=2, key_bits=8, max_bucket=5)
    assert len(every) == 10


def test_groups_keep_the_preferred_clip_and_list_every_copy():
    keys = [
        (2, "train", "a"),
        (0, "test", "b"),
        (2, "train", "c"),
        (2, "train", "d"),
        (1, "val", "e"),
    ]
    pairs = np.array([[0, 2], [2, 1], [3, 4]])
    assert hygiene.group_duplicates(pairs, keys) == [(1, 0), (1, 2), (4, 3)]
