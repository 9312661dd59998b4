"""Fixtures shared across test folders: a tiny toy-av set (generated once per session and
prepared), and caplog for the avdet loggers."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from avdet.config import CfgNode, load_config


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """The `tiny` toy-av preset with 3 classes (real mp4 files), made and prepared once."""
    from avdet.data.sources import ensure_prepared

    root = tmp_path_factory.mktemp("toy") / "toy-av"
    ensure_prepared(tiny_toy_cfg(root, tmp_path_factory.mktemp("toy_out")))
    return root


@pytest.fixture
def avdet_caplog(caplog, monkeypatch):
    """caplog at INFO that sees the "avdet" loggers even after an earlier test's setup_logger
    stopped them propagating to the root logger, where caplog listens."""
    monkeypatch.setattr(logging.getLogger("avdet"), "propagate", True)
    caplog.set_level(logging.INFO)
    return caplog


@pytest.fixture(scope="session")
def toy_cfg(toy_root):
    """`toy_cfg(output_dir, *opts)`: a tiny CPU config on the session's toy set."""
    return lambda output_dir, *opts: tiny_toy_cfg(toy_root, output_dir, *opts)


def tiny_toy_cfg(root: Path, output_dir: Path, *opts: str) -> CfgNode:
    """A CPU config for tiny, fast runs on the toy set at `root`."""
    return load_config(
        None,
        [
            "OUTPUT_DIR", str(output_dir),
            "DEVICE", "cpu",
            "DATASETS.TOY.ROOT", str(root),
            "DATASETS.TOY.PRESET", "tiny",
            "DATASETS.TOY.NUM_CLASSES", "3",
            "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.PREPARE_WORKERS", "2",
            *opts,
        ],
    )  # fmt: skip
