"""Real mp4 clips for the data tests, written with avdet.data.writer.write_av_clip.

Frame i of a clip is a uniform colour (R = 10 * i, G = 200 - 5 * i, B = 60), so the decoded frame
says which frame it is; the audio is a sine whose frequency the tests look for.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from avdet.data.writer import write_av_clip


def frame_colour(index: int) -> tuple[int, int, int]:
    return 10 * index, 200 - 5 * index, 60


def frame_index(frame: np.ndarray) -> int:
    """Which frame_colour() a decoded frame shows (from its mean red)."""
    return round(float(frame[..., 0].mean()) / 10)


def sine(
    freq: float, seconds: float, sample_rate: int, channels: int = 1, amp: float = 0.5
) -> np.ndarray:
    """[channels, T] float32 sine, the same in every channel."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return np.tile(amp * np.sin(2 * np.pi * freq * t), (channels, 1)).astype(np.float32)


def dominant_frequency(audio: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * sample_rate / len(audio))


@pytest.fixture
def av_helpers() -> SimpleNamespace:
    """The helpers above, for tests: frame_colour, frame_index, sine, dominant_frequency."""
    return SimpleNamespace(
        frame_colour=frame_colour,
        frame_index=frame_index,
        sine=sine,
        dominant_frequency=dominant_frequency,
    )


@pytest.fixture
def make_clip(tmp_path: Path):
    """make_clip(name, n_frames=25, fps=25, size=(48, 64), freq=440., sample_rate=16000,
    channels=1, audio=True, video=True, frame_times=None, seconds=None, video_codec="libx264")
    -> Path of a real mp4 in tmp_path."""

    def make(
        name: str,
        *,
        n_frames: int = 25,
        fps: float = 25,
        size: tuple[int, int] = (48, 64),
        freq: float = 440.0,
        sample_rate: int = 16000,
        channels: int = 1,
        audio: bool = True,
        video: bool = True,
        frame_times: list[float] | None = None,
        seconds: float | None = None,
        video_codec: str = "libx264",
    ) -> Path:
        frames = [np.full((*size, 3), frame_colour(i), np.uint8) for i in range(n_frames)]
        seconds = seconds if seconds is not None else n_frames / fps
        wave = sine(freq, seconds, sample_rate, channels) if audio else None
        return write_av_clip(
            tmp_path / name,
            frames if video else None,
            wave,
            fps=fps,
            sample_rate=sample_rate,
            frame_times=frame_times,
            video_codec=video_codec,
        )

    return make
