"""Write real video files (h264 + AAC mp4 by default) with PyAV: the toy set and the tests use it."""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

_LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}
# Encoders that reject odd frame sizes in yuv420p (mpeg4 and VP9, for example, take them).
_EVEN_SIZE_CODECS = ("libx264", "libx265")
# x264 with one thread and only the SSE2 code every x86-64 processor has. Its AVX-512 code (in
# the macroblock-tree rate control) reads memory it never wrote, so the same frames came out as
# other bytes depending on what the process had allocated before; its AVX code rounds that
# control's floats otherwise than the C code, so files differed between processors too. SSE2
# gives the C code's bytes at AVX2's speed. Elsewhere x264 picks its own code.
_X264_OPTIONS = {"preset": "veryfast", "threads": "1"}
if platform.machine().lower() in ("x86_64", "amd64"):
    _X264_OPTIONS["x264-params"] = "asm=MMX2,SSE2"


def write_av_clip(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray] | None,
    audio: np.ndarray | None,
    *,
    fps: float | Fraction = 25,
    sample_rate: int = 16000,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    crf: int = 23,
    frame_times: Iterable[float] | None = None,
) -> Path:
    """Encode `frames` ([H, W, 3] uint8 RGB each) and `audio` ([C, T] or [T] float in [-1, 1]).

    Either stream may be None (a video-only or audio-only file). `frame_times` (seconds, one per
    frame, increasing) gives a variable frame rate, and a first time after 0 a video stream that
    starts late (the audio still starts at 0); otherwise frames are spaced at 1 / fps from 0.
    H and W are made even where the codec needs it (x264/x265 in yuv420p), by padding one
    row/column; other codecs keep odd sizes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = list(frames) if frames is not None else []
    with av.open(str(path), "w") as container:
        vstream = astream = None
        if frames:
            even = video_codec in _EVEN_SIZE_CODECS
            height, width = frames[0].shape[:2]
            if even:
                height, width = height + height % 2, width + width % 2
            vstream = container.add_stream(video_codec, rate=Fraction(fps).limit_denominator(1001))
            vstream.width, vstream.height = width, height
            vstream.pix_fmt = "yuv420p"
            if video_codec == "libx264":
                vstream.options = {"crf": str(crf), **_X264_OPTIONS}
            if frame_times is not None:
                vstream.codec_context.time_base = Fraction(1, 1000)
        if audio is not None:
            samples = np.atleast_2d(np.asarray(audio, dtype=np.float32))
            channels = samples.shape[0]
            if channels not in _LAYOUTS:
                raise ValueError(f"{path}: cannot write {channels} audio channels")
            astream = container.add_stream(audio_codec, rate=sample_rate)
            astream.layout = _LAYOUTS[channels]
        if vstream is not None:
            times = list(frame_times) if frame_times is not None else None
            for i, rgb in enumerate(frames):
                rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
                if even:
                    rgb = _pad_even(rgb)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                if times is not None:
                    frame.pts = round(times[i] * 1000)
                    frame.time_base = Fraction(1, 1000)
                for packet in vstream.encode(frame):
                    container.mux(packet)
            for packet in vstream.encode(None):
                container.mux(packet)
        if astream is not None:
            frame = av.AudioFrame.from_ndarray(
                np.clip(samples, -1.0, 1.0), format="fltp", layout=_LAYOUTS[channels]
            )
            frame.sample_rate = sample_rate
            for packet in astream.encode(frame):
                container.mux(packet)
            for packet in astream.encode(None):
                container.mux(packet)
    return path


def _pad_even(rgb: np.ndarray) -> np.ndarray:
    pad_h, pad_w = rgb.shape[0] % 2, rgb.shape[1] % 2
    if pad_h or pad_w:
        rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return rgb
