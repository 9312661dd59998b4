"""Clip indexes: which video files make up a dataset, with their label and split.

Two layouts: VGGSound (a headerless CSV `youtube_id,start_seconds,label,split` next to a folder of
`<youtube_id>_<start_seconds:06d>.mp4`; the toy set uses it too) and any folder of videos.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


@dataclass
class ClipRecord:
    """One clip: `clip_id` is unique in its index and names the prepared files."""

    clip_id: str
    path: Path
    label: str
    split: str
    start: float = 0.0


def vggsound_file_name(youtube_id: str, start_seconds: int) -> str:
    """The VGGSound file name of a clip, `<youtube_id>_<start_seconds:06d>.mp4`."""
    return f"{youtube_id}_{start_seconds:06d}.mp4"


def read_vggsound_csv(
    csv_path: str | os.PathLike,
    video_dir: str | os.PathLike,
    splits: Iterable[str] | None = None,
) -> tuple[list[ClipRecord], list[dict]]:
    """Read a VGGSound CSV; keep the rows of `splits` (None: all) whose video exists.

    Returns the records and a list of {"path", "reason"} problems: missing files, and malformed
    rows (wrong column count, non-integer start, repeated clip) with their CSV line number.
    Labels containing commas must be quoted; blank lines are skipped.
    """
    csv_path, video_dir = Path(csv_path), Path(video_dir)
    wanted = set(splits) if splits is not None else None
    records: list[ClipRecord] = []
    problems: list[dict] = []
    seen: dict[str, int] = {}
    missing = 0
    with open(csv_path, newline="") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            line = reader.line_num
            if len(row) != 4:
                problems.append(_bad_row(csv_path, line, f"expected 4 columns, got {len(row)}"))
                continue
            youtube_id, start, label, split = (field.strip() for field in row)
            try:
                start_seconds = int(start)
            except ValueError:
                problems.append(_bad_row(csv_path, line, f"start {start!r} is not an integer"))
                continue
            if wanted is not None and split not in wanted:
                continue
            name = vggsound_file_name(youtube_id, start_seconds)
            clip_id = Path(name).stem
            if clip_id in seen:
                problems.append(
                    _bad_row(csv_path, line, f"clip {clip_id} repeats line {seen[clip_id]}")
                )
                continue
            seen[clip_id] = line
            path = video_dir / name
            if not path.is_file():
                missing += 1
                problems.append({"path": str(path), "reason": f"file not found (CSV line {line})"})
                continue
            records.append(ClipRecord(clip_id, path, label, split, float(start_seconds)))
    if problems:
        logger.warning(
            "%s: %d clips found, %d files missing, %d bad rows",
            csv_path,
            len(records),
            missing,
            len(problems) - missing,
        )
    return records, problems


def index_video_folder(root: str | os.PathLike, label_from_parent: bool = True) -> list[ClipRecord]:
    """Every video under `root` (recursive, VIDEO_EXTENSIONS), sorted by relative path.

    clip_id is the relative path without its extension, folders joined by "__" (plus the
    extension if two files differ only by it); label is the parent folder's name ("" for files
    directly in `root` or with label_from_parent=False); split is "".
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    paths = sorted(
        path
        for path in root.rglob("*")
        if path.suffix.lower() in VIDEO_EXTENSIONS
        and path.is_file()
        and not path.name.startswith(".")
    )
    stems = [path.relative_to(root).with_suffix("").as_posix().replace("/", "__") for path in paths]
    repeated = {stem for stem, count in Counter(stems).items() if count > 1}
    records = []
    for path, stem in zip(paths, stems, strict=True):
        clip_id = f"{stem}_{path.suffix.lower().lstrip('.')}" if stem in repeated else stem
        in_subfolder = path.parent != root
        label = path.parent.name if label_from_parent and in_subfolder else ""
        records.append(ClipRecord(clip_id, path, label, ""))
    return records


def _bad_row(csv_path: Path, line: int, reason: str) -> dict:
    return {"path": f"{csv_path}:{line}", "reason": f"bad row: {reason}"}


def load_clip_records(
    csv_path: str | os.PathLike | None = None,
    video_dir: str | os.PathLike | None = None,
    folder: str | os.PathLike | None = None,
    splits: Iterable[str] | None = None,
) -> tuple[list[ClipRecord], list[dict]]:
    """The clips of a VGGSound CSV (with its video folder) or of any folder of videos.

    The command-line tools' one entry point; returns (records, problems), problems being the
    CSV rows left out (always empty for a folder).
    """
    if csv_path:
        return read_vggsound_csv(csv_path, video_dir, splits)
    if folder:
        return index_video_folder(folder), []
    raise ValueError("give a CSV (with its video folder) or a folder of videos")
