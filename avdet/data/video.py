"""Decode one frame and the audio of a clip with PyAV: the single entry point to video files.

Times are seconds on the file's presentation timeline (pts * time_base), the same for video and
audio, so a frame and the audio around it stay aligned however the streams are offset. The video
stream spans [start, start + duration): `start` is its first frame's timestamp, which need not be
0 (cut files, edit lists, video that begins after the audio), and `duration` is the length of the
span up to the end of its last frame. The frame "at time t" is the one on screen at t: the last
frame whose pts <= t (the first frame for a t before it). The default frame is the one in the
middle of the span (start + duration / 2), the same definition the toy-set generator annotates
(frame N // 2 of an N-frame clip at constant fps). Audio is resampled to one rate and downmixed to
mono as the mean of its channels, so a signal present in every channel keeps its amplitude.

Frames come as a player shows them: turned by the stream's display rotation (phone videos store
a portrait frame as landscape plus a rotation) and stretched to square pixels when the sample
aspect ratio is not 1 (anamorphic and DV video). Boxes drawn on the displayed frame then fit it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

# Slack when comparing timestamps given as floats with exact pts (much less than one frame).
_TIME_EPS = 1e-6
# Audio windows starting later than this are reached by seeking instead of decoding from 0.
_AUDIO_SEEK_AFTER = 2.0
# Decoded audio ending this much before the stream's declared end means the file is cut short.
_AUDIO_TRUNCATION_SLACK = 0.25


class ClipReadError(Exception):
    """A clip that cannot be read; `path` names the file and `reason` says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class Clip:
    """One decoded clip: the chosen frame and the audio around it.

    frame: [H, W, 3] uint8 RGB; audio: [T] float32 mono in [-1, 1] at `sample_rate`;
    frame_time: the frame's own timestamp in seconds; start, duration: the video stream's span
    in seconds (its first frame's timestamp, and the length from there to its end).
    """

    frame: np.ndarray
    frame_time: float
    audio: np.ndarray
    sample_rate: int
    start: float
    duration: float
    width: int
    height: int


def read_frame(path: str | os.PathLike, time: float | None = None) -> tuple[np.ndarray, float]:
    """The RGB uint8 [H, W, 3] frame on screen at `time` seconds (None or < 0: the middle).

    Returns the frame and its actual timestamp in seconds.
    """
    with _open(path) as container:
        vstream = _video_stream(container, path)
        target = _target_time(time, _stream_span(container, vstream, path), path)
        return _decode_frame(container, vstream, path, target)


def read_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    start: float | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Float32 mono [T] audio in [-1, 1] at `sample_rate`, from `start` seconds for `duration`.

    Any input rate and channel layout is accepted. With `duration` given the result has exactly
    round(duration * sample_rate) samples, zero-padded where the window leaves the clip; without
    it, the audio runs from `start` (default 0) to the end of the stream.
    """
    with _open(path) as container:
        astream = _audio_stream(container, path)
        return _decode_audio(container, astream, path, sample_rate, start or 0.0, duration)


def read_clip(
    path: str | os.PathLike,
    frame_time: float | None = None,
    audio_seconds: float | None = 3.0,
    sample_rate: int = 16000,
) -> Clip:
    """Decode the frame at `frame_time` (None: the middle) and `audio_seconds` of audio around it.

    The audio window is centred on the frame's timestamp and zero-padded at the clip's edges;
    `audio_seconds=None` returns the whole clip's audio from time 0 instead. Silent audio is not
    an error here. Every failure raises ClipReadError with the reason.
    """
    with _open(path) as container:
        vstream = _video_stream(container, path)
        astream = _audio_stream(container, path)
        span = _stream_span(container, vstream, path)
        frame, actual_time = _decode_frame(
            container, vstream, path, _target_time(frame_time, span, path)
        )
        if audio_seconds is None:
            start, window = 0.0, None
        else:
            start, window = actual_time - audio_seconds / 2, audio_seconds
        audio = _decode_audio(container, astream, path, sample_rate, start, window)
        return Clip(
            frame=frame,
            frame_time=actual_time,
            audio=audio,
            sample_rate=sample_rate,
            start=float(span[0]),
            duration=float(span[1] - span[0]),
            width=frame.shape[1],
            height=frame.shape[0],
        )


def crop_or_pad(
    samples: np.ndarray,
    sample_rate: int,
    start: float,
    duration: float | None,
    first_sample_time: float = 0.0,
) -> np.ndarray:
    """Cut [start, start + duration) seconds out of `samples` ([T], first one at
    `first_sample_time`), zero-padding what lies outside; duration None: up to the end."""
    offset = round((start - first_sample_time) * sample_rate)
    length = max(len(samples) - offset, 0) if duration is None else round(duration * sample_rate)
    out = np.zeros(length, dtype=np.float32)
    lo, hi = max(offset, 0), min(offset + length, len(samples))
    if hi > lo:
        out[lo - offset : hi - offset] = samples[lo:hi]
    return out


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    path = Path(path)
    if not path.is_file():
        raise ClipReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise ClipReadError(path, "empty file (0 bytes)")
    try:
        return av.open(str(path), "r")
    except av.error.FFmpegError as exc:
        raise ClipReadError(path, f"not a readable media file ({_ffmpeg_message(exc)})") from exc


def _video_stream(container: av.container.InputContainer, path: str | os.PathLike):
    if not container.streams.video:
        raise ClipReadError(path, "no video stream")
    return container.streams.video[0]


def _audio_stream(container: av.container.InputContainer, path: str | os.PathLike):
    if not container.streams.audio:
        raise ClipReadError(path, "no audio stream")
    return container.streams.audio[0]


def _ffmpeg_message(exc: av.error.FFmpegError) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _stream_span(
    container: av.container.InputContainer, vstream, path: str | os.PathLike
) -> tuple[Fraction, Fraction]:
    """(start, end) of the video stream in seconds: its first frame's timestamp, and the later of
    start + the header's duration and the end of its last frame (max pts + duration over its
    packets); without either, the container's duration from `start`.

    The two ends agree for well-formed constant-rate files; the packet scan (demuxing only, no
    decoding) covers headers that lack a duration (Matroska) or only span the decode order
    (variable frame rate with B-frames). Packets an edit list cuts away (flagged discard: decoded
    only as references, never shown) are not part of the span.
    """
    time_base = vstream.time_base
    first = end = None
    try:
        for packet in container.demux(vstream):
            if packet.pts is not None and not packet.is_discard:
                packet_end = packet.pts + (packet.duration or 0)
                first = packet.pts if first is None else min(first, packet.pts)
                end = packet_end if end is None else max(end, packet_end)
    except av.error.FFmpegError as exc:
        raise ClipReadError(path, f"undecodable video ({_ffmpeg_message(exc)})") from exc
    if first is None:
        first = vstream.start_time or 0
    start = first * time_base
    header = vstream.duration * time_base if vstream.duration else Fraction(0)
    if end is None and not header:
        return start, start + Fraction(container.duration or 0, av.time_base)
    return start, max(start + header, (end or 0) * time_base)


def _target_time(
    time: float | None, span: tuple[Fraction, Fraction], path: str | os.PathLike
) -> Fraction:
    """The requested time, or the middle of the video stream's span for None or a negative time."""
    start, end = span
    if time is None or time < 0:
        return (start + end) / 2
    if end > start and time > end:
        raise ClipReadError(
            path, f"frame time {time:.3f} s is past the end of the video ({float(end):.3f} s)"
        )
    return Fraction(time)


def _decode_frame(
    container: av.container.InputContainer, vstream, path: str | os.PathLike, target: Fraction
) -> tuple[np.ndarray, float]:
    """Seek to the keyframe before `target` seconds, decode up to it and convert only the chosen
    frame to RGB. If the seek lands past the target, decode from the start instead."""
    time_base = vstream.time_base
    try:
        for seek_to in (target, Fraction(0)):
            container.seek(int(seek_to / time_base), stream=vstream)
            chosen = last = None
            for frame in container.decode(vstream):
                if frame.pts is None:
                    continue
                last = frame
                if frame.pts * time_base > target + _TIME_EPS:
                    break
                chosen = frame
            if chosen is not None or seek_to == 0:
                break
    except av.error.FFmpegError as exc:
        raise ClipReadError(path, f"undecodable video ({_ffmpeg_message(exc)})") from exc
    if last is None:
        raise ClipReadError(path, "no decodable video frames")
    if chosen is None:  # the target lies before the first frame
        chosen = last
    elif last is chosen:  # the stream ended without passing the target
        frame_seconds = (chosen.duration or 0) * time_base or 1 / (vstream.average_rate or 25)
        end = chosen.pts * time_base + frame_seconds
        if target > end + _TIME_EPS:
            raise ClipReadError(
                path,
                f"truncated: video ends at {float(end):.3f} s, before the requested frame at "
                f"{float(target):.3f} s",
            )
    return displayed_rgb(chosen, vstream), float(chosen.pts * time_base)


def displayed_rgb(frame: av.VideoFrame, vstream) -> np.ndarray:
    """The frame's RGB pixels with square pixels and the display rotation applied, as a player
    shows them (also for tools that decode every frame, such as the detector demo).

    The sample aspect ratio (pixel width / height) stretches the width, as ffmpeg's players do;
    `frame.rotation` is the angle (degrees, counter-clockwise) the display matrix turns the coded
    frame by, applied in quarter turns.
    """
    rgb = frame.to_ndarray(format="rgb24")
    aspect = vstream.sample_aspect_ratio
    if aspect and aspect != 1:
        height, width = rgb.shape[:2]
        display_width = max(1, round(width * aspect))
        if display_width != width:
            shrink = display_width < width
            interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            rgb = cv2.resize(rgb, (display_width, height), interpolation=interpolation)
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


def _decode_audio(
    container: av.container.InputContainer,
    astream,
    path: str | os.PathLike,
    sample_rate: int,
    start: float,
    duration: float | None,
) -> np.ndarray:
    """Decode the audio covering [start, start + duration) (None: to the end), resample it to
    `sample_rate`, average the channels, and cut/pad it to the window."""
    resampler = av.AudioResampler(format="fltp", rate=sample_rate)
    chunks: list[np.ndarray] = []
    first_time = None
    end = None if duration is None else start + duration
    try:
        seek_to = start - 1.0 if start > _AUDIO_SEEK_AFTER else 0.0
        container.seek(int(seek_to / astream.time_base), stream=astream)
        for frame in container.decode(astream):
            if first_time is None:
                first_time = frame.time or 0.0
            chunks.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(frame))
            if end is not None and frame.time is not None and frame.time > end:
                break
        chunks.extend(out.to_ndarray().mean(axis=0) for out in resampler.resample(None))
    except av.error.FFmpegError as exc:
        raise ClipReadError(path, f"undecodable audio ({_ffmpeg_message(exc)})") from exc
    if first_time is None:
        raise ClipReadError(path, "no decodable audio frames")
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0)
    decoded_end = first_time + len(samples) / sample_rate
    declared_end = float(astream.duration * astream.time_base) if astream.duration else 0.0
    needed_end = declared_end if end is None else min(end, declared_end)
    if decoded_end < needed_end - _AUDIO_TRUNCATION_SLACK:
        raise ClipReadError(
            path,
            f"truncated: audio ends at {decoded_end:.3f} s, the stream declares "
            f"{declared_end:.3f} s",
        )
    return crop_or_pad(np.clip(samples, -1.0, 1.0), sample_rate, start, duration, first_time)
