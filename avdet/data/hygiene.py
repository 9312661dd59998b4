"""Clip hygiene: flag still, silent, short and unreadable clips and find duplicates across splits.

Every clip is measured once (decoded with avdet.data.video, in parallel): the video
stream's duration, the audio's RMS level in dBFS, a motion score, a 64-bit DCT perceptual hash of
each of `frames_per_clip` evenly spaced frames, and a binary audio fingerprint. The measurements
go to a JSON-lines cache beside the report as they come, keyed by the file's path, size and
modification time, so a killed run resumes where it stopped and a rerun with other thresholds
decodes nothing.

Duplicates: bit-sampling LSH over each clip's concatenated frame hashes proposes candidate pairs
(O(N log N) per table), and a candidate is a duplicate when its frame hashes AND its audio
fingerprints both match within their thresholds. Copies form groups (connected components);
each group keeps one clip, preferring the split that comes first in `keep_splits` (the
evaluation split by default), and reports one [kept, copy] pair per other member, the shape
that avdet.data.prepare.read_exclude_report reads (it excludes the second file of each pair).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import scipy.fft
from tqdm import tqdm

from avdet.data.indexes import ClipRecord
from avdet.data.prepare import rms_dbfs
from avdet.data.video import ClipReadError, read_clip, read_frame
from avdet.utils.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

# Bump when a measurement changes meaning: cached rows of another version are recomputed.
# 2: duration and frame times span the video stream from its first frame, not from time 0.
# 3: frames are hashed as displayed (display rotation applied, pixels made square).
MEASURE_VERSION = 3
FLAG_KEYS = ("still", "silent", "short", "unreadable")
# Default thresholds (docs/data_hygiene.md says how they were chosen).
MIN_RMS_DBFS = -60.0  # quieter audio is `silent` (the same default as prepare_clips)
MIN_DURATION = 1.0  # shorter videos (seconds) are `short`
STILL_THRESHOLD = 0.1  # grey levels; one image re-encoded scores < 0.01, slight motion > 0.15
FRAMES_PER_CLIP = 4
MAX_FRAME_DISTANCE = 10.0  # bits of 64; copies measured <= 5.5, different clips >= 17
MAX_AUDIO_DISTANCE = 0.25  # bit error rate; copies measured <= 0.18, different clips >= 0.36
# The split listed first is kept when copies of a clip sit in several splits (see docs).
KEEP_SPLITS = ("test", "val", "train")

THUMB_SIZE = 32  # greyscale thumbnail side for the motion score and the perceptual hash
HASH_SIZE = 8  # the hash keeps the HASH_SIZE x HASH_SIZE lowest DCT frequencies: 64 bits
FLAT_STD = 1.0  # a thumbnail with less contrast than this (grey levels) hashes to 0

SAMPLE_RATE = 16000  # audio is decoded at this rate for the level and the fingerprint
FP_WINDOW = 6144  # fingerprint frame: 0.384 s hann window ...
FP_HOP = 800  # ... every 0.05 s
FP_EDGES_HZ = np.geomspace(200.0, 6000.0, 34)  # 33 log-spaced bands -> 32 bits per frame
FP_MAX_OFFSET = 6  # fingerprints are compared at offsets up to +-6 steps (0.3 s)

LSH_TABLES = 64  # tables of bit-sampling LSH over the concatenated frame hashes
LSH_KEY_BITS = 24  # sampled bits per table key
LSH_MAX_BUCKET = 1000  # larger buckets (degenerate hashes) are skipped, with a warning
LSH_SEED = 0

# popcount of every byte value, for Hamming distances on uint8 views of hashes
_POPCOUNT8 = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(1)


def check_clips(
    records: Iterable[ClipRecord],
    output_json: str | os.PathLike,
    *,
    workers: int = 0,
    min_rms_dbfs: float = MIN_RMS_DBFS,
    min_duration: float = MIN_DURATION,
    still_threshold: float = STILL_THRESHOLD,
    frames_per_clip: int = FRAMES_PER_CLIP,
    max_frame_distance: float = MAX_FRAME_DISTANCE,
    max_audio_distance: float = MAX_AUDIO_DISTANCE,
    keep_splits: Sequence[str] = KEEP_SPLITS,
    cache_dir: str | os.PathLike | None = None,
) -> dict:
    """Measure every clip of `records`, flag bad ones and duplicates, write REPORT.json; return it.

    Flags: `unreadable` (ClipReadError or any decoder error), `short` (video shorter than
    `min_duration` s), `silent` (audio RMS below `min_rms_dbfs`), `still` (no sampled frame
    differs from the previous one by more than `still_threshold` grey levels on average).
    `duplicates`: [kept, copy] pairs whose mean per-frame hash distance is at most
    `max_frame_distance` bits of 64 and whose audio fingerprints differ in at most
    `max_audio_distance` of their bits; `split_overlap`: those whose two clips' splits differ.
    Entries are file names (`record.path.name`), or clip ids where those differ from the file
    name's stem (folders of videos with subfolders). `workers`: processes (0: one per CPU; 1: in
    this process). The cache `<report name>.partial.jsonl` lives in `cache_dir` (default: beside
    the report) and is kept for reruns; delete it to measure everything again.
    """
    if frames_per_clip < 2:
        raise ValueError(f"frames_per_clip must be at least 2 to see motion, got {frames_per_clip}")
    records = list(records)
    names = [report_name(record) for record in records]
    repeated = sorted(name for name, count in Counter(names).items() if count > 1)
    if repeated:
        raise ValueError(f"clip file names must be unique; repeated: {', '.join(repeated[:5])}")
    output_json = Path(output_json)
    cache = Path(cache_dir or output_json.parent) / f"{output_json.name}.partial.jsonl"
    measures = measure_all(records, cache, frames_per_clip=frames_per_clip, workers=workers)
    flags, reasons = _flags(names, measures, min_duration, min_rms_dbfs, still_threshold)
    readable = [i for i, row in enumerate(measures) if row["error"] is None]
    hashes = np.array(
        [[int(h, 16) for h in measures[i]["frame_hashes"]] for i in readable], dtype=np.uint64
    ).reshape(len(readable), frames_per_clip)
    pairs = find_duplicates(
        hashes,
        [decode_fingerprint(measures[i]["audio_fingerprint"]) for i in readable],
        max_frame_distance=max_frame_distance,
        max_audio_distance=max_audio_distance,
    )
    rank = {split: i for i, split in enumerate(keep_splits)}
    keys = [(rank.get(records[i].split, len(rank)), records[i].split, names[i]) for i in readable]
    duplicates = [[readable[kept], readable[copy]] for kept, copy in group_duplicates(pairs, keys)]
    report = {
        **flags,
        "duplicates": [[names[a], names[b]] for a, b in duplicates],
        "split_overlap": [
            [names[a], names[b]] for a, b in duplicates if records[a].split != records[b].split
        ],
        "counts": {},
        "thresholds": {
            "min_rms_dbfs": min_rms_dbfs,
            "min_duration": min_duration,
            "still_threshold": still_threshold,
            "frames_per_clip": frames_per_clip,
            "max_frame_distance": max_frame_distance,
            "max_audio_distance": max_audio_distance,
            "keep_splits": list(keep_splits),
        },
        "unreadable_reasons": reasons,
    }
    listed = (*FLAG_KEYS, "duplicates", "split_overlap")
    report["counts"] = {"clips": len(records), **{key: len(report[key]) for key in listed}}
    atomic_write_json(output_json, report, indent=1)
    logger.info("wrote %s:\n%s", output_json, format_summary(report))
    return report


def _flags(
    names: list[str],
    measures: list[dict],
    min_duration: float,
    min_rms_dbfs: float,
    still_threshold: float,
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """The sorted names in each of FLAG_KEYS, and the reason of each unreadable clip."""
    flags: dict[str, list[str]] = {key: [] for key in FLAG_KEYS}
    reasons: dict[str, str] = {}
    for name, row in sorted(zip(names, measures, strict=True), key=lambda item: item[0]):
        if row["error"] is not None:
            flags["unreadable"].append(name)
            reasons[name] = row["error"]
            continue
        level = -math.inf if row["rms_dbfs"] is None else row["rms_dbfs"]
        for key, flagged in (
            ("short", row["duration"] < min_duration),
            ("silent", level < min_rms_dbfs),
            ("still", row["motion"] < still_threshold),
        ):
            if flagged:
                flags[key].append(name)
    return flags, reasons


def report_name(record: ClipRecord) -> str:
    """How a report names a clip: its file name, or its clip id where that is not the file's stem
    (files in subfolders of a folder of videos); prepare_clips --exclude matches either."""
    return record.path.name if record.path.stem == record.clip_id else record.clip_id


def format_summary(report: dict) -> str:
    """A few lines saying how many clips fall in each category of a report."""
    counts = report["counts"]
    lines = [f"clips checked: {counts['clips']}"]
    lines += [f"  {key}: {counts[key]}" for key in FLAG_KEYS]
    lines.append(f"  duplicates (copies to drop): {counts['duplicates']}")
    lines.append(f"  split overlap (copies across splits): {counts['split_overlap']}")
    return "\n".join(lines)


# --- per-clip measurements -------------------------------------------------------------------


def measure_all(
    records: Sequence[ClipRecord], cache: Path, *, frames_per_clip: int, workers: int
) -> list[dict]:
    """The measurement row of every record (same order), from `cache` or decoded now.

    Rows are appended to `cache` as they are computed; a cached row is reused while its file
    keeps the same resolved path, size and mtime and its measurements have the same version and
    frames_per_clip. The cache is rewritten (atomically) without stale rows and torn lines first.
    """
    params = {"version": MEASURE_VERSION, "frames_per_clip": frames_per_clip}
    cached = {
        row["path"]: row
        for row in read_jsonl(cache)
        if row.get("params") == params and "error" in row
    }
    if cache.exists():
        atomic_write_text(cache, "".join(_json_line(row) for row in cached.values()))
    keys = [_file_key(record.path) for record in records]
    todo = sorted({key for key in keys if cached.get(key[0], {}).get("file") != list(key)})
    logger.info("%s: %d clips to measure, %d cached", cache, len(todo), len(keys) - len(todo))
    tasks = [(Path(path), frames_per_clip) for path, _, _ in todo]
    workers = min(workers or os.cpu_count() or 1, max(len(tasks), 1))
    with _imap(measure_task, tasks, workers) as results:
        for row in tqdm(results, total=len(tasks), desc="check clips", unit="clip"):
            row = {**row, "params": params}
            append_jsonl(cache, row)
            cached[row["path"]] = row
    return [cached[key[0]] for key in keys]


def measure_task(task: tuple[Path, int]) -> dict:
    """One clip's measurement row: {"path", "file", "error", measure_clip's keys}.

    `file` is [path, size, mtime_ns] as seen before decoding; `error` is None or the reason the
    clip cannot be read (then the measurements are absent).
    """
    path, frames_per_clip = task
    row = {"path": str(path), "file": list(_file_key(path)), "error": None}
    try:
        return {**row, **measure_clip(path, frames_per_clip)}
    except ClipReadError as exc:
        return {**row, "error": exc.reason}
    except Exception as exc:  # a decoder surprise on one file must not stop the run
        return {**row, "error": f"unexpected decoder error: {exc!r}"}


def measure_clip(path: str | os.PathLike, frames_per_clip: int = FRAMES_PER_CLIP) -> dict:
    """Decode one clip into the measurements the checks need (raises ClipReadError).

    Returns {"duration": length of the video stream's span in seconds, "rms_dbfs": whole-clip
    audio level (None for digital silence), "motion": motion_score of the frames,
    "frame_hashes": 16-hex-digit perceptual hashes of the frames at (i + 0.5) / frames_per_clip
    of the span (from its first frame, which need not be at time 0), "audio_fingerprint":
    encode_fingerprint of the whole audio}.
    """
    clip = read_clip(path, frame_time=0.0, audio_seconds=None, sample_rate=SAMPLE_RATE)
    times = [
        clip.start + (i + 0.5) / frames_per_clip * clip.duration for i in range(frames_per_clip)
    ]
    thumbs = [thumbnail(read_frame(path, time)[0]) for time in times]
    level = rms_dbfs(clip.audio)
    return {
        "duration": clip.duration,
        "rms_dbfs": level if math.isfinite(level) else None,
        "motion": motion_score(thumbs),
        "frame_hashes": [f"{perceptual_hash(thumb):016x}" for thumb in thumbs],
        "audio_fingerprint": encode_fingerprint(audio_fingerprint(clip.audio)),
    }


def thumbnail(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> greyscale float32 [32, 32] on 0..255 (area-averaged, any aspect)."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return cv2.resize(grey, (THUMB_SIZE, THUMB_SIZE), interpolation=cv2.INTER_AREA)


def motion_score(thumbs: Sequence[np.ndarray]) -> float:
    """The largest mean absolute difference (grey levels) between consecutive thumbnails.

    Zero (up to coding noise) only when every sampled frame shows the same image.
    """
    return max(float(np.abs(a - b).mean()) for a, b in zip(thumbs[:-1], thumbs[1:], strict=True))


def perceptual_hash(thumb: np.ndarray) -> int:
    """64-bit DCT perceptual hash of a [32, 32] thumbnail: which of the 8 x 8 lowest-frequency
    DCT coefficients lie above their median (as in pHash). Flat thumbnails hash to 0."""
    if thumb.std() < FLAT_STD:
        return 0
    low = scipy.fft.dctn(thumb.astype(np.float64), norm="ortho")[:HASH_SIZE, :HASH_SIZE]
    return int.from_bytes(np.packbits(low.ravel() > np.median(low)).tobytes(), "big")


def audio_fingerprint(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[T] mono audio -> [F] uint32: one 32-bit word per 0.05 s step (after Haitsma & Kalker).

    Bit b of word t is the sign of the change from step t to t + 1 of the log-energy difference
    between bands b and b + 1 (33 log-spaced bands, 200-6000 Hz, 0.384 s hann windows). Signs
    of differences ignore gain and a smooth equaliser, and coding noise rarely flips them; the
    long overlapping windows tolerate the tens of milliseconds that re-encoding shifts audio by
    (AAC priming). Digital silence gives all-zero words; audio shorter than one window plus one
    step gives an empty array.
    """
    audio = np.asarray(audio, dtype=np.float32)
    if len(audio) < FP_WINDOW:
        audio = np.pad(audio, (0, FP_WINDOW - len(audio)))
    windows = np.lib.stride_tricks.sliding_window_view(audio, FP_WINDOW)[::FP_HOP]
    power = np.abs(np.fft.rfft(windows * np.hanning(FP_WINDOW), axis=1)) ** 2
    cumulative = np.pad(np.cumsum(power, axis=1), ((0, 0), (1, 0)))
    bins = np.round(FP_EDGES_HZ * FP_WINDOW / sample_rate).astype(int)
    log_energy = np.log(cumulative[:, bins[1:]] - cumulative[:, bins[:-1]] + 1e-10)
    across = log_energy[:, :-1] - log_energy[:, 1:]  # [steps, 32]
    bits = across[1:] - across[:-1] > 0
    words = np.ascontiguousarray(np.packbits(bits, axis=1, bitorder="little"))
    return words.view("<u4").ravel().astype(np.uint32)


def fingerprint_distance(a: np.ndarray, b: np.ndarray, max_offset: int = FP_MAX_OFFSET) -> float:
    """Bit error rate between two fingerprints at the best offset in [-max_offset, max_offset]
    steps, over at least half of the shorter one (1.0 when they are too short to compare)."""
    shortest = min(len(a), len(b))
    best = 1.0
    for offset in range(-max_offset, max_offset + 1):
        x, y = a[max(offset, 0) :], b[max(-offset, 0) :]
        n = min(len(x), len(y))
        if n == 0 or 2 * n < shortest:
            continue
        best = min(best, float(_popcount(x[:n] ^ y[:n]).sum()) / (32 * n))
    return best


def encode_fingerprint(fingerprint: np.ndarray) -> str:
    """A fingerprint as base64 text (little-endian uint32 words), for JSON."""
    return base64.b64encode(fingerprint.astype("<u4").tobytes()).decode("ascii")


def decode_fingerprint(text: str) -> np.ndarray:
    """The inverse of encode_fingerprint."""
    return np.frombuffer(base64.b64decode(text), dtype="<u4").astype(np.uint32)


# --- duplicates ------------------------------------------------------------------------------


def find_duplicates(
    frame_hashes: np.ndarray,
    fingerprints: Sequence[np.ndarray],
    *,
    max_frame_distance: float = MAX_FRAME_DISTANCE,
    max_audio_distance: float = MAX_AUDIO_DISTANCE,
    tables: int = LSH_TABLES,
    key_bits: int = LSH_KEY_BITS,
    max_bucket: int = LSH_MAX_BUCKET,
) -> np.ndarray:
    """Pairs (i < j) of clips whose frames and sound both match: [P, 2] int64, sorted.

    frame_hashes: [N, K] uint64, the K frame hashes of each clip; fingerprints: N audio
    fingerprints. Candidates come from `tables` LSH tables keyed on `key_bits` random bits of
    the K * 64; a pair at per-bit disagreement p meets in a table with probability
    (1 - p) ** key_bits: copies (p <= 0.09 measured, i.e. <= 5.5 bits of 64) are found with
    probability > 0.999 by 64 tables of 24 bits, and unrelated clips (p ~ 0.5) meet about
    N**2 / 2 * tables * 2**-key_bits times (120k candidates for N = 200k). Candidates then need a
    mean frame-hash distance <= max_frame_distance bits and a fingerprint_distance <=
    max_audio_distance. Cost: O(tables * N log N + candidates).
    """
    hashes = np.ascontiguousarray(frame_hashes, dtype=">u8")
    if len(hashes) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    candidates = lsh_candidates(hashes, tables=tables, key_bits=key_bits, max_bucket=max_bucket)
    bits_apart = _popcount(hashes[candidates[:, 0]] ^ hashes[candidates[:, 1]])
    visual = candidates[bits_apart.mean(axis=1) <= max_frame_distance]
    keep = [
        fingerprint_distance(fingerprints[i], fingerprints[j]) <= max_audio_distance
        for i, j in visual
    ]
    logger.info(
        "duplicates: %d LSH candidates, %d look alike, %d also sound alike",
        len(candidates),
        len(visual),
        sum(keep),
    )
    return visual[np.array(keep, dtype=bool)] if len(visual) else visual


def lsh_candidates(
    frame_hashes: np.ndarray, *, tables: int, key_bits: int, max_bucket: int, seed: int = LSH_SEED
) -> np.ndarray:
    """Pairs (i < j) sharing a bucket in any of `tables` bit-sampling LSH tables: [P, 2] int64.

    frame_hashes: [N, K] uint64 as big-endian (">u8"). Buckets with more than `max_bucket` clips
    (e.g. every black video) are skipped with a warning, bounding the work at
    tables * N * max_bucket pairs.
    """
    n = len(frame_hashes)
    bits = np.unpackbits(frame_hashes.view(np.uint8).reshape(n, -1), axis=1)  # [N, K * 64]
    rng = np.random.default_rng(seed)
    weights = np.left_shift(np.int64(1), np.arange(key_bits, dtype=np.int64))
    found = [np.zeros((0, 2), dtype=np.int64)]
    skipped = 0
    for _ in range(tables):
        chosen = rng.choice(bits.shape[1], size=key_bits, replace=False)
        keys = bits[:, chosen].astype(np.int64) @ weights
        pairs, skipped_here = _same_key_pairs(keys, max_bucket)
        found.append(pairs)
        skipped += skipped_here
    if skipped:
        logger.warning(
            "duplicates: %d clip-table entries sat in LSH buckets of more than %d clips and were "
            "not compared (degenerate frame hashes, e.g. blank videos)",
            skipped,
            max_bucket,
        )
    pairs = np.concatenate(found)
    codes = np.unique(pairs[:, 0] * max(n, 1) + pairs[:, 1])
    return np.stack([codes // max(n, 1), codes % max(n, 1)], axis=1)


def _same_key_pairs(keys: np.ndarray, max_bucket: int) -> tuple[np.ndarray, int]:
    """All pairs (i < j) with keys[i] == keys[j] in buckets of 2..max_bucket entries, and how
    many entries sat in larger buckets. Vectorised over offsets within the sorted buckets."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    size_at = np.repeat(sizes, sizes)
    left_at = size_at - (np.arange(len(keys)) - np.repeat(starts, sizes)) - 1  # entries after
    positions = np.flatnonzero((size_at <= max_bucket) & (left_at > 0))
    found = []
    offset = 1
    while len(positions):
        found.append(np.stack([order[positions], order[positions + offset]], axis=1))
        offset += 1
        positions = positions[left_at[positions] >= offset]
    pairs = np.concatenate(found) if found else np.zeros((0, 2), dtype=np.int64)
    return np.sort(pairs, axis=1).astype(np.int64), int(sizes[sizes > max_bucket].sum())


def group_duplicates(pairs: np.ndarray, keys: Sequence) -> list[tuple[int, int]]:
    """[kept, copy] pairs: each connected group of duplicate `pairs` keeps its member with the
    smallest `keys[i]` and pairs it with every other member; sorted by (kept, copy) keys."""
    parent = list(range(len(keys)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs.tolist():
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b, key=keys.__getitem__)] = min(a, b, key=keys.__getitem__)
    members = {i for pair in pairs.tolist() for i in pair}
    grouped = [(root(i), i) for i in members if root(i) != i]
    return sorted(grouped, key=lambda pair: (keys[pair[0]], keys[pair[1]]))


# --- helpers ---------------------------------------------------------------------------------


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each element of an unsigned integer array (same shape)."""
    words = np.ascontiguousarray(words)
    per_byte = _POPCOUNT8[words.view(np.uint8)]
    return per_byte.reshape(*words.shape, words.itemsize).sum(-1)


def _file_key(path: Path) -> tuple[str, int, int]:
    """(resolved path, size, mtime_ns) of a file; size and mtime -1 when it is missing."""
    try:
        stat = path.stat()
    except OSError:
        return str(path.resolve()), -1, -1
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _json_line(row: dict) -> str:
    return json.dumps(row) + "\n"


@contextlib.contextmanager
def _imap(function: Callable, tasks: list, workers: int) -> Iterator[Iterator]:
    """function over tasks in completion order, in a pool of `workers` (1: in this process)."""
    if workers <= 1:
        yield map(function, tasks)
        return
    # spawn: the parent may hold torch/OpenMP or tqdm threads that fork would copy mid-state.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield pool.imap_unordered(function, tasks, chunksize=1)
