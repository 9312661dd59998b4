"""Fixtures shared across test folders: a tiny toy-av set (generated once per session and
prepared), caplog for the avdet loggers, and a writer of rotated / anamorphic test videos."""

from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
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


# An AV model small enough to train and run in seconds on the tiny toy set.
TINY_AV_MODEL = (
    "INPUT.FRAME_SIZE", "(64, 80)",
    "INPUT.AUDIO.SECONDS", "1.0",
    "INPUT.AUDIO.N_MELS", "32",
    "MODEL.VISUAL.LAST_STAGE", "layer2",
    "MODEL.AUDIO.LAST_STAGE", "layer2",
    "MODEL.EMBED_DIM", "32",
    "MODEL.HEAD_HIDDEN_DIM", "32",
    "MODEL.NUM_CLUSTERS", "3",
)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_av_cfg(toy_root):
    """`tiny_av_cfg(output_dir, *opts)`: `toy_cfg` with the tiny AV model (TINY_AV_MODEL)."""
    return lambda output_dir, *opts: tiny_toy_cfg(toy_root, output_dir, *TINY_AV_MODEL, *opts)


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


@pytest.fixture
def marked_video():
    """`marked_video(path, rotation=0, aspect=1, frames=3)`: see `write_marked_video`."""
    return write_marked_video


def write_marked_video(
    path: Path, rotation: int = 0, aspect: Fraction = Fraction(1), frames: int = 3
) -> Path:
    """A 64x32 h264 clip, white 8x8 square in the top-left corner of the coded frame, stored with
    a display rotation (degrees counter-clockwise) and a sample aspect ratio."""
    image = np.zeros((32, 64, 3), np.uint8)
    image[:8, :8] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.codec_context.sample_aspect_ratio = aspect
        if rotation:
            stream.set_display_rotation(rotation)
        for _ in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    return path
