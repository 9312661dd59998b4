"""Resolve a config's data source (the toy set or a VGGSound-layout set) and make sure it is prepared.

Every stage calls `ensure_prepared(cfg)`: on a fresh checkout the toy set is generated, and any
set is decoded once by `prepare_clips` (resumable), so configs work without manual steps. A run
of several stages in one process (the pipeline) prepares once, in `prepared_once`, inside which
the stages' own calls return at once instead of reading the CSV and logging it all again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from avdet.config import CfgNode

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSource:
    """Where a VGGSound-layout dataset lives and where its prepared form goes."""

    csv: Path
    video_dir: Path
    annotation_dir: Path | None
    prepared_dir: Path
    is_toy: bool

    def annotation(self, name: str) -> Path | None:
        """Path of e.g. `instances_test.json` or `vggss_test.json`, or None when absent."""
        if self.annotation_dir is None:
            return None
        path = self.annotation_dir / name
        return path if path.exists() else None


# The sources a `prepared_once` block has prepared; ensure_prepared skips them.
_PREPARED: set[DataSource] = set()


def resolve_source(cfg: CfgNode) -> DataSource:
    """The dataset named by DATASETS.* (the toy set when DATASETS.CSV is empty)."""
    ds = cfg.DATASETS
    if not ds.CSV:
        root = Path(ds.TOY.ROOT)
        return DataSource(
            csv=root / "vggsound.csv",
            video_dir=root / "video",
            annotation_dir=Path(ds.ANNOTATION_DIR) if ds.ANNOTATION_DIR else root / "annotations",
            prepared_dir=Path(ds.PREPARED_DIR) if ds.PREPARED_DIR else root / "prepared",
            is_toy=True,
        )
    csv = Path(ds.CSV)
    return DataSource(
        csv=csv,
        video_dir=Path(ds.VIDEO_DIR) if ds.VIDEO_DIR else csv.parent / "video",
        annotation_dir=Path(ds.ANNOTATION_DIR) if ds.ANNOTATION_DIR else None,
        prepared_dir=Path(ds.PREPARED_DIR)
        if ds.PREPARED_DIR
        else Path(cfg.OUTPUT_DIR) / "prepared",
        is_toy=False,
    )


def ensure_prepared(cfg: CfgNode) -> DataSource:
    """Generate the toy set if it is the source and missing, then prepare every clip (resumable).

    CSV rows left out (no video file, malformed, repeated) are logged by read_vggsound_csv, the
    preparation's summary by prepare_clips.
    """
    from avdet.data.indexes import read_vggsound_csv
    from avdet.data.prepare import prepare_clips

    source = resolve_source(cfg)
    if source in _PREPARED:
        logger.debug("%s: prepared earlier in this run", source.prepared_dir)
        return source
    if source.is_toy:
        from avdet.data.toy import ensure_toy_dataset

        ensure_toy_dataset(cfg)
    if not source.csv.is_file():
        raise FileNotFoundError(f"{source.csv}: dataset CSV not found (DATASETS.CSV)")
    records, _ = read_vggsound_csv(source.csv, source.video_dir)
    prepare_clips(
        records,
        source.prepared_dir,
        frame_time=None if cfg.INPUT.FRAME_TIME < 0 else cfg.INPUT.FRAME_TIME,
        sample_rate=cfg.INPUT.AUDIO.SAMPLE_RATE,
        workers=cfg.DATALOADER.PREPARE_WORKERS,
    )
    return source


@contextlib.contextmanager
def prepared_once(cfg: CfgNode) -> Iterator[DataSource]:
    """ensure_prepared(cfg); inside the block, ensure_prepared of the same source does nothing.

    For several stages run in one process, each of which prepares its data itself (stage 1 does):
    the set is prepared and its summary logged once. Nothing else may write the prepared folder
    inside the block.
    """
    source = ensure_prepared(cfg)
    added = source not in _PREPARED
    _PREPARED.add(source)
    try:
        yield source
    finally:
        if added:
            _PREPARED.discard(source)
