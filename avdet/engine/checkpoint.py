"""Checksummed, atomically written checkpoints and strict, named-key model loading.

Layout in OUTPUT_DIR (detectron2 style, plus checksums):
- `<name>.pth`: `torch.save` of a dict of plain tensors, numbers, strings, lists and dicts, so
  `torch.load(..., weights_only=True)` reads it (no arbitrary unpickling).
- `<name>.pth.sha256`: JSON `{"file", "sha256", "size"}` written beside it.
- `last_checkpoint`: JSON with the same record for the newest checkpoint; `--resume` reads it.

Each file is written to a temporary name and renamed, so a killed process leaves the old file or
the new one, never a half-written one. Loading verifies size and sha256 against the sidecar, so a
truncated or edited checkpoint is an error naming the file, never a silent load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from avdet.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
SIDECAR_SUFFIX = ".sha256"
_MAX_NAMES = 30


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, mismatched or does not fit the model; names the file."""


class LoadResult(NamedTuple):
    """Keys that did not load (only non-empty with strict=False)."""

    missing: list[str]
    unexpected: list[str]
    shape_mismatch: list[str]


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The {"file", "sha256", "size"} record beside `path`, or None when there is none."""
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        return None
    try:
        record = json.loads(sidecar.read_text())
        return {
            "file": record["file"],
            "sha256": str(record["sha256"]),
            "size": int(record["size"]),
        }
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{sidecar}: malformed checksum record ({exc})") from exc


def verify_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """Check `path` against its sidecar; returns the record, or None when there is no sidecar.

    Raises CheckpointError when the file is missing or its size or sha256 differ.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    expected = _read_sidecar(path)
    if expected is None:
        return None
    sidecar = sidecar_path(path).name
    size = path.stat().st_size
    if size != expected["size"]:
        raise CheckpointError(
            f"{path}: size is {size} bytes but {sidecar} records {expected['size']} "
            "(truncated or replaced file)"
        )
    sha = sha256_file(path)
    if sha != expected["sha256"]:
        raise CheckpointError(
            f"{path}: sha256 {sha} does not match {expected['sha256']} recorded in {sidecar} "
            "(the file was modified or corrupted)"
        )
    return expected


def load_checkpoint(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint on the CPU with `weights_only=True`, after checking its sidecar.

    Raises CheckpointError naming the file when it is missing, fails verification, or is not a
    weights_only-loadable dict.
    """
    path = Path(path)
    if verify:
        if verify_checkpoint(path) is None:
            logger.warning("%s: no %s sidecar; loading without checksum", path, SIDECAR_SUFFIX)
    elif not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise CheckpointError(
            f"{path}: cannot load with weights_only=True ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(state).__name__}")
    return state


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMES])
    return shown + (f", ... ({len(keys) - _MAX_NAMES} more)" if len(keys) > _MAX_NAMES else "")


def load_model_state(
    model: nn.Module, state_dict: dict[str, torch.Tensor], source: str, strict: bool = True
) -> LoadResult:
    """Load `state_dict` into `model`, naming every missing, unexpected or mis-shaped key.

    A "module." prefix (a state dict saved from DistributedDataParallel) is removed first.
    strict=True: any problem raises CheckpointError naming `source`. strict=False: the matching
    tensors load, the rest is logged and returned.
    """
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatch = [k for k, v in own.items() if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_names(unexpected)}")
    if mismatch:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatch]
        problems.append(f"shape mismatches (checkpoint vs model): {_names(shapes)}")
    if problems and strict:
        raise CheckpointError(
            f"{source}: does not fit {type(model).__name__}: " + "; ".join(problems)
        )
    if problems:
        logger.warning(
            "%s: loaded into %s with %s", source, type(model).__name__, "; ".join(problems)
        )
    loadable = {k: v for k, v in state.items() if k in own and k not in mismatch}
    model.load_state_dict(loadable, strict=False)
    return LoadResult(missing, unexpected, mismatch)


def read_model_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model weights in `path`: a trainer checkpoint's "model" entry or a bare state dict,
    verified like any checkpoint, with a DistributedDataParallel "module." prefix removed."""
    state = load_checkpoint(path)
    if isinstance(state.get("model"), dict):
        state = state["model"]
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: neither a checkpoint with a 'model' entry nor a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> LoadResult:
    """Load model weights from a trainer checkpoint (its "model" entry) or a bare state dict."""
    return load_model_state(model, read_model_state(path), source=str(path), strict=strict)


class Checkpointer:
    """Saves and finds checkpoints in one output directory.

    save_to_disk=False (every rank but 0) makes `save` a no-op, so all ranks can call it.
    """

    def __init__(self, output_dir: str | os.PathLike, save_to_disk: bool = True) -> None:
        self.output_dir = Path(output_dir)
        self.save_to_disk = save_to_disk

    def save(self, name: str, **state: Any) -> Path | None:
        """Write `OUTPUT_DIR/<name>.pth`, its sidecar, then point `last_checkpoint` at it."""
        if not self.save_to_disk:
            return None
        path = self.output_dir / f"{name}.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            record = {"file": path.name, "sha256": sha256_file(tmp), "size": os.path.getsize(tmp)}
            atomic_write_json(sidecar_path(path), record)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        atomic_write_json(self.output_dir / LAST_CHECKPOINT, record)
        logger.info("saved checkpoint %s (%.1f MB)", path, record["size"] / 1e6)
        return path

    def load(self, path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
        """`load_checkpoint(path, verify)`: verified, weights_only, on the CPU."""
        return load_checkpoint(path, verify)

    def get_checkpoint_file(self) -> Path | None:
        """The checkpoint `last_checkpoint` points at, or None when there is none.

        Reads avdet's JSON record and detectron2's plain file name. A record that names a
        missing file or disagrees with the file's sidecar raises CheckpointError.
        """
        record_path = self.output_dir / LAST_CHECKPOINT
        if not record_path.is_file():
            return None
        text = record_path.read_text().strip()
        try:
            record = json.loads(text)
        except json.JSONDecodeError:
            record = {"file": text}
        if not isinstance(record, dict) or not record.get("file"):
            raise CheckpointError(f"{record_path}: malformed record {text!r}")
        path = self.output_dir / record["file"]
        if not path.is_file():
            raise CheckpointError(f"{record_path}: names {path}, which does not exist")
        sidecar = _read_sidecar(path)
        if sidecar is not None and record.get("sha256", sidecar["sha256"]) != sidecar["sha256"]:
            raise CheckpointError(
                f"{record_path}: records sha256 {record['sha256']} for {path.name}, but "
                f"{sidecar_path(path).name} has {sidecar['sha256']} (the checkpoint was replaced)"
            )
        return path

    def has_checkpoint(self) -> bool:
        return (self.output_dir / LAST_CHECKPOINT).is_file()
