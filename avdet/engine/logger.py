"""Run logging: the "avdet" logger (stdout + OUTPUT_DIR/log.txt) and metrics.json (JSON lines).

Rank 0 logs INFO to stdout and everything to log.txt; other ranks log only to log.txt.rank<N>,
so a multi-process run prints each message once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from avdet.utils.io import append_jsonl, atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

_FORMAT = "[%(asctime)s %(name)s %(levelname)s] %(message)s"
_DATEFMT = "%m/%d %H:%M:%S"
_tensorboard_notice_logged = False


class _ConsoleHandler(logging.Handler):
    """Writes to the current `sys.stdout` (so pytest's capture works) through `tqdm.write`, which
    keeps a running progress bar intact below the log lines."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:
            self.handleError(record)


def setup_logger(
    output_dir: str | os.PathLike | None = None, rank: int = 0, name: str = "avdet"
) -> logging.Logger:
    """Configure logger `name`; calling it again replaces the handlers it installed before."""
    log = logging.getLogger(name)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in [h for h in log.handlers if getattr(h, "_avdet", False)]:
        log.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(_FORMAT, datefmt=_DATEFMT)
    handlers: list[logging.Handler] = []
    if rank == 0:
        console = _ConsoleHandler()
        console.setLevel(logging.INFO)
        handlers.append(console)
    if output_dir:
        path = Path(output_dir) / ("log.txt" if rank == 0 else f"log.txt.rank{rank}")
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    for handler in handlers:
        handler._avdet = True  # type: ignore[attr-defined]
        handler.setFormatter(formatter)
        log.addHandler(handler)
    return log


class MetricsWriter:
    """Appends metric records to OUTPUT_DIR/metrics.json and, if installed, TensorBoard.

    Each record is one JSON object per line, with an "iteration" key (detectron2's format).
    enabled=False (ranks other than 0) makes every method a no-op.
    """

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(output_dir) / "metrics.json"
        self.enabled = enabled
        self._tensorboard = self._open_tensorboard(Path(output_dir)) if enabled else None

    @staticmethod
    def _open_tensorboard(output_dir: Path) -> Any:
        global _tensorboard_notice_logged
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if not _tensorboard_notice_logged:
                logger.info("TensorBoard: off (not installed)")
                _tensorboard_notice_logged = True
            return None
        return SummaryWriter(str(output_dir))

    def write(self, record: dict[str, Any]) -> None:
        """Append `record` (must contain "iteration"); numeric values also go to TensorBoard."""
        if not self.enabled:
            return
        append_jsonl(self.path, record)
        if self._tensorboard is not None:
            step = record["iteration"]
            for key, value in record.items():
                if key != "iteration" and isinstance(value, int | float):
                    self._tensorboard.add_scalar(key, value, step)

    def discard_from(self, iteration: int) -> None:
        """Drop records with iteration >= `iteration` (written after the checkpoint we resume)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [r for r in read_jsonl(self.path) if r.get("iteration", -1) < iteration]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
