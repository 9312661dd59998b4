"""Prepare clips for training: decode every video once into a frame JPEG and a 16 kHz wav.

Layout of `output_dir`:
    frames/<clip_id>.jpg   the frame at `frame_time` (default: the middle), original size, q95
    audio/<clip_id>.wav    the whole clip's audio from time 0, mono int16 PCM at `sample_rate`
    manifest.jsonl         one JSON line per good clip (paths relative to output_dir)
    failures.jsonl         one JSON line per bad clip: {"clip_id", "path", "reason"}

Times in the manifest are seconds on the file's timeline (avdet.data.video), the wav's first
sample being time 0: `frame_time` is the frame's timestamp, and `video_start` and `duration` the
video stream's span (its first frame need not be at 0).

Every file is written atomically and a clip's manifest line only after its frame and audio, so a
killed run leaves whole entries only. A second run skips every clip already in the manifest or in
failures.jsonl (delete failures.jsonl to retry them); a manifest entry whose files have gone
missing is dropped and redone. One run per output directory at a time.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import re
import wave
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from avdet.data.indexes import ClipRecord
from avdet.data.video import ClipReadError, crop_or_pad, read_clip
from avdet.utils.io import append_jsonl, atomic_open, atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
FAILURES = "failures.jsonl"
JPEG_QUALITY = 95
_INT16_SCALE = 32767


@dataclass
class PrepareSummary:
    """What one prepare_clips run did; failed_by_reason groups reasons without their details."""

    total: int = 0
    done: int = 0
    skipped_existing: int = 0
    excluded: int = 0
    failed: int = 0
    failed_by_reason: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [
            f"clips: {self.total}",
            f"prepared now: {self.done}",
            f"already done (skipped): {self.skipped_existing}",
            f"excluded: {self.excluded}",
            f"failed now: {self.failed}",
        ]
        lines += [f"  {reason}: {count}" for reason, count in sorted(self.failed_by_reason.items())]
        return "\n".join(lines)


def prepare_clips(
    records: Iterable[ClipRecord],
    output_dir: str | os.PathLike,
    *,
    frame_time: float | None = None,
    sample_rate: int = 16000,
    workers: int = 0,
    min_rms_dbfs: float = -60.0,
    exclude: Iterable[str] = (),
) -> PrepareSummary:
    """Decode each clip of `records` once into `output_dir` (see the module docstring).

    `workers` processes decode in parallel (0: os.cpu_count(); 1: in this process). Clips whose
    audio RMS is below `min_rms_dbfs` are failures ("silent audio"). `exclude` holds clip ids or
    file names to leave out. A bad clip never stops the run; an error writing the output does.
    """
    records = list(records)
    output_dir = Path(output_dir)
    _check_unique(records)
    finished = _resume(output_dir)
    excluded = set(exclude)
    summary = PrepareSummary(total=len(records))
    todo = []
    for record in records:
        if record.clip_id in excluded or record.path.name in excluded:
            summary.excluded += 1
        elif record.clip_id in finished:
            summary.skipped_existing += 1
        else:
            todo.append(record)
    tasks = [(record, output_dir, frame_time, sample_rate, min_rms_dbfs) for record in todo]
    reasons: Counter[str] = Counter()
    workers = min(workers or os.cpu_count() or 1, max(len(tasks), 1))
    with _task_results(tasks, workers) as results:
        for kind, row in tqdm(results, total=len(tasks), desc="prepare clips", unit="clip"):
            if kind == "ok":
                append_jsonl(output_dir / MANIFEST, row)
                summary.done += 1
            else:
                append_jsonl(output_dir / FAILURES, row)
                logger.info("failed %s: %s", row["path"], row["reason"])
                reasons[failure_kind(row["reason"])] += 1
    summary.failed = sum(reasons.values())
    summary.failed_by_reason = dict(reasons)
    logger.info("prepared %s:\n%s", output_dir, summary)
    return summary


def load_manifest(output_dir: str | os.PathLike) -> list[dict]:
    """The manifest's entries sorted by clip_id (worker timing does not change the order)."""
    return sorted(read_jsonl(Path(output_dir) / MANIFEST), key=lambda entry: entry["clip_id"])


def prepared_counts(output_dir: str | os.PathLike) -> dict:
    """What a prepared folder holds, over every run that wrote it: {"prepared": clips in the
    manifest, "failed": clips in failures.jsonl, "failed_by_reason": failure_kind -> count}.

    Read from the files rather than from one run's PrepareSummary, which counts only what that
    run did (nothing, on a rerun over a finished folder).
    """
    output_dir = Path(output_dir)
    failures = read_jsonl(output_dir / FAILURES)
    reasons = Counter(failure_kind(row["reason"]) for row in failures)
    return {
        "prepared": len(read_jsonl(output_dir / MANIFEST)),
        "failed": len(failures),
        "failed_by_reason": dict(sorted(reasons.items())),
    }


def save_wav(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> None:
    """Write float [T] audio in [-1, 1] as mono int16 PCM, atomically."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * _INT16_SCALE).astype("<i2")
    with atomic_open(path, "wb") as handle, wave.open(handle, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.setnframes(len(pcm))
        out.writeframes(pcm.tobytes())


def load_wav(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    start: float | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Read a mono int16 wav as float32 [T] in [-1, 1], checking its rate if `sample_rate` is set.

    With `start`/`duration` (seconds) only that window is read, zero-padded outside the file
    (the convention of video.read_audio and video.crop_or_pad).
    """
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != 2:
            raise ValueError(
                f"{path}: expected mono 16-bit PCM, got {wav.getnchannels()} channels of "
                f"{8 * wav.getsampwidth()} bits"
            )
        rate, total = wav.getframerate(), wav.getnframes()
        if sample_rate is not None and rate != sample_rate:
            raise ValueError(f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz")
        start = start or 0.0
        first = min(max(round(start * rate), 0), total)
        last = total if duration is None else round((start + duration) * rate)
        wav.setpos(first)
        pcm = np.frombuffer(wav.readframes(max(min(last, total) - first, 0)), dtype="<i2")
    samples = pcm.astype(np.float32) / _INT16_SCALE
    return crop_or_pad(samples, rate, start, duration, first / rate)


def read_exclude_report(path: str | os.PathLike) -> set[str]:
    """File names to exclude from a clip-check report (datasets/check_clips.py's REPORT.json).

    Every string in the report's lists is excluded; for a pair ([kept, duplicate], as in
    "duplicates" and "split_overlap") only the second file is, so one copy of each clip stays.
    A report that is a plain list of names is accepted too.
    """
    report = json.loads(Path(path).read_text())
    lists = report.values() if isinstance(report, dict) else [report]
    names: set[str] = set()
    for entries in lists:
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, str):
                names.add(entry)
            elif isinstance(entry, list | tuple) and entry:
                names.update(str(name) for name in entry[1:])
    return names


def rms_dbfs(audio: np.ndarray) -> float:
    """RMS level of [T] audio in dB relative to full scale (-inf for digital silence)."""
    rms = math.sqrt(float(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def failure_kind(reason: str) -> str:
    """A reason without its details: "silent audio (-inf dBFS)" -> "silent audio"."""
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()


def _check_unique(records: list[ClipRecord]) -> None:
    counts = Counter(record.clip_id for record in records)
    repeated = sorted(clip_id for clip_id, count in counts.items() if count > 1)
    if repeated:
        raise ValueError(f"clip ids must be unique; repeated: {', '.join(repeated[:5])}")


def _resume(output_dir: Path) -> set[str]:
    """Tidy what a killed run left and return the clip ids already finished.

    Drops a torn last line, manifest entries whose files are gone, and stray temp files.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    for folder in (".", "frames", "audio"):
        for tmp in (output_dir / folder).glob(".*.tmp"):
            tmp.unlink()
    manifest = read_jsonl(output_dir / MANIFEST)
    complete = [
        entry
        for entry in manifest
        if (output_dir / entry["frame"]).is_file() and (output_dir / entry["audio"]).is_file()
    ]
    failures = read_jsonl(output_dir / FAILURES)
    for name, entries, kept in ((MANIFEST, manifest, complete), (FAILURES, failures, failures)):
        path = output_dir / name
        if path.exists() and (len(kept) < len(entries) or not _ends_with_newline(path)):
            atomic_write_text(path, "".join(_json_line(entry) for entry in kept))
    if len(complete) < len(manifest):
        logger.warning(
            "%s: %d manifest entries lost their files and will be redone",
            output_dir,
            len(manifest) - len(complete),
        )
    return {entry["clip_id"] for entry in complete} | {entry["clip_id"] for entry in failures}


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _json_line(entry: dict) -> str:
    return json.dumps(entry) + "\n"


@contextlib.contextmanager
def _task_results(tasks: list[tuple], workers: int) -> Iterator[Iterator[tuple[str, dict]]]:
    """Results of _prepare_one over `tasks` in completion order, from a pool of `workers`."""
    if workers <= 1:
        yield map(_prepare_one, tasks)
        return
    # spawn: the parent may hold torch/OpenMP or tqdm threads that fork would copy mid-state.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield pool.imap_unordered(_prepare_one, tasks, chunksize=1)


def _prepare_one(task: tuple[ClipRecord, Path, float | None, int, float]) -> tuple[str, dict]:
    """Decode one clip and write its frame and wav: ("ok", manifest row) or ("failed", row)."""
    record, output_dir, frame_time, sample_rate, min_rms_dbfs = task
    failure = {"clip_id": record.clip_id, "path": str(record.path)}
    try:
        clip = read_clip(record.path, frame_time, audio_seconds=None, sample_rate=sample_rate)
    except ClipReadError as exc:
        return "failed", {**failure, "reason": exc.reason}
    except Exception as exc:  # a decoder surprise on one file must not stop the run
        return "failed", {**failure, "reason": f"unexpected decoder error: {exc!r}"}
    level = rms_dbfs(clip.audio)
    if level < min_rms_dbfs:
        return "failed", {**failure, "reason": f"silent audio ({level:.1f} dBFS)"}
    frame_file, audio_file = f"frames/{record.clip_id}.jpg", f"audio/{record.clip_id}.wav"
    with atomic_open(output_dir / frame_file, "wb") as handle:
        Image.fromarray(clip.frame).save(handle, format="JPEG", quality=JPEG_QUALITY)
    save_wav(output_dir / audio_file, clip.audio, sample_rate)
    return "ok", {
        "clip_id": record.clip_id,
        "video": str(record.path.resolve()),
        "frame": frame_file,
        "audio": audio_file,
        "label": record.label,
        "split": record.split,
        "video_start": clip.start,
        "duration": clip.duration,
        "frame_time": clip.frame_time,
        "width": clip.width,
        "height": clip.height,
        "sample_rate": sample_rate,
        "num_samples": len(clip.audio),
        "rms_dbfs": level if math.isfinite(level) else None,
    }
