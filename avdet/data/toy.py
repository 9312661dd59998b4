"""The built-in synthetic audio-visual dataset `toy-av`: real mp4 clips of objects that make sounds.

Each clip shows a cluttered scene with one sounding object (a class-specific shape, colour family and
texture) and sometimes one or two silent objects of other classes; its audio is that class's sound
(a tone, noise band, rhythm or chirps, varied within the class) plus background noise at a random
SNR. The set is written in the VGGSound layout (`vggsound.csv`, `video/<id>_<start:06d>.mp4`) with
ground truth for the middle frame (index N // 2 of N frames) as COCO (`instances_<split>.json`,
every object, with a `sounding` flag) and VGG-SS (`vggss_<split>.json`, the sounding object).

Everything a clip contains is drawn from an RNG seeded by (seed, clip index), so a dataset is the
same for a given seed whatever the number of worker processes.
"""

from __future__ import annotations

import colorsys
import contextlib
import csv
import io
import json
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from avdet.data.coco import make_coco, save_coco
from avdet.data.writer import write_av_clip
from avdet.utils.io import atomic_write_json, atomic_write_text

logger = logging.getLogger(__name__)

# Bump when the generator's output changes, so an old dataset is not taken for a current one.
TOY_VERSION = 2
TOY_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"clips_per_class": 5, "seconds": 3.0},
    "small": {"clips_per_class": 220, "seconds": 3.0},
}
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.2}  # the rest is train; stratified by class
META_FILE = "toy_meta.json"
_CLIPS_FILE = ".toy_clips.json"  # parameters of the clips in video/, written before any clip

FRAME_SIZES = ((160, 120), (192, 144), (192, 108), (144, 108))  # (width, height)
FRAME_SIZE_P = (0.5, 0.2, 0.2, 0.1)
FPS_CHOICES = (10, 12, 15, 20, 24, 25)
FPS_P = (0.15, 0.15, 0.25, 0.15, 0.1, 0.2)
SAMPLE_RATES = (16000, 22050, 44100)
SAMPLE_RATE_P = (0.5, 0.25, 0.25)
STEREO_P = 0.3
DISTRACTOR_P = 0.45  # chance of trying one or two silent objects of other classes
LARGE_P = 0.5  # chance that the sounding object's box covers a quarter of the frame or more
SNR_DB = (5.0, 20.0)
OFFSCREEN_P = 0.3  # chance of a faint sound of another class with nothing on screen
OFFSCREEN_DB = (-16.0, -8.0)  # its level relative to the sounding object


class ToyDatasetError(RuntimeError):
    """The output folder holds a different toy dataset, or generation failed (names the path)."""


# ------------------------------------------------------------------------------------------------
# Sounds: each returns a mono signal [n] at `sr` (any level; it is normalised later).


def _phase(freq: np.ndarray, sr: int) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq) / sr


def _harmonic(freq: np.ndarray, sr: int, amps: np.ndarray | list[float]) -> np.ndarray:
    """Sum of harmonics k * freq with weights `amps` ([K] or [K, n]); aliasing ones fade out."""
    phase = _phase(freq, sr)
    out = np.zeros_like(freq)
    for k, amp in enumerate(amps, start=1):
        fade = np.clip((0.45 * sr - k * freq) / (0.05 * sr), 0.0, 1.0)
        if np.any(fade > 0):
            out += amp * fade * np.sin(k * phase)
    return out


def _spectral(x: np.ndarray, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Filter `x` in the frequency domain by `gain(freqs_hz)`."""
    spec = np.fft.rfft(x)
    return np.fft.irfft(spec * gain(np.fft.rfftfreq(len(x), 1.0 / sr)), n=len(x))


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-passed to [lo, hi] Hz with soft edges, unit RMS."""
    hi = min(hi, 0.48 * sr)
    x = _spectral(
        rng.standard_normal(n),
        sr,
        lambda f: 1.0 / (1 + ((f - (lo + hi) / 2) / ((hi - lo) / 2)) ** 8),
    )
    return _unit_rms(x)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _resonances(peaks: list[tuple[float, float, float]]) -> Callable[[np.ndarray], np.ndarray]:
    """Gain curve: 1 plus Gaussian bumps (centre Hz, width Hz, gain) for formants/body modes."""

    def gain(f: np.ndarray) -> np.ndarray:
        return 1.0 + sum(g * np.exp(-(((f - c) / w) ** 2)) for c, w, g in peaks)

    return gain


def _onsets(rng: np.random.Generator, seconds: float, gap: tuple[float, float]) -> np.ndarray:
    """Event times from a random start, with gaps drawn from `gap` (seconds)."""
    times, t = [], rng.uniform(0.0, 0.3)
    while t < seconds - 0.1:
        times.append(t)
        t += rng.uniform(*gap)
    return np.asarray(times)


def _add_events(
    out: np.ndarray, sr: int, times: np.ndarray, event: Callable[[np.ndarray, int], np.ndarray]
) -> np.ndarray:
    """Add `event(t, i)` (t: seconds from the onset, [L]) at each onset time."""
    n = len(out)
    for i, onset in enumerate(times):
        start = int(onset * sr)
        if start >= n:
            continue
        length = min(n - start, int(1.5 * sr))
        out[start : start + length] += event(np.arange(length) / sr, i)
    return out


def _melody(
    rng: np.random.Generator,
    n: int,
    sr: int,
    fmin: float,
    fmax: float,
    notes: tuple[int, int],
    legato: float,
    attack: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample frequency [n] and gate envelope [n] for a few notes on a semitone grid."""
    count = int(rng.integers(*notes, endpoint=True))
    bounds = np.sort(rng.uniform(0.05, 0.95, count - 1)) if count > 1 else np.array([])
    edges = np.concatenate([[0.0], bounds, [1.0]]) * n
    steps = int(12 * math.log2(fmax / fmin))
    freq, gate = np.zeros(n), np.zeros(n)
    for i in range(count):
        a, b = int(edges[i]), int(edges[i + 1])
        freq[a:b] = fmin * 2 ** (rng.integers(0, steps + 1) / 12)
        length = max(1, int((b - a) * legato))
        t = np.arange(length) / sr
        release = np.clip((length / sr - t) / 0.05, 0.0, 1.0)
        gate[a : a + length] = np.minimum(1.0, t / attack) * release
    freq = _smooth(freq, int(0.02 * sr))
    return freq, gate


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    if width < 2:
        return x
    return np.convolve(np.pad(x, width, mode="edge"), np.ones(width) / width, mode="same")[
        width:-width
    ]


def _slow_noise(rng: np.random.Generator, n: int, points: int) -> np.ndarray:
    """A smooth random curve [n] in about [-1, 1] (for drifts and fluctuations)."""
    return np.interp(np.linspace(0, points - 1, n), np.arange(points), rng.uniform(-1, 1, points))


def _vibrato(n: int, sr: int, rate: float, depth: float, delay: float = 0.0) -> np.ndarray:
    t = np.arange(n) / sr
    return 1 + depth * np.minimum(1.0, t / max(delay, 1e-3)) * np.sin(2 * np.pi * rate * t)


def _drum(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    f0, decay, snap = rng.uniform(55, 130), rng.uniform(0.08, 0.25), rng.uniform(0.15, 0.6)
    noise = _band_noise(rng, int(1.5 * sr), sr, 150, 4000)
    times = _onsets(rng, n / sr, (1 / rng.uniform(2.0, 4.5), 1 / 1.5))
    accents = rng.uniform(0.5, 1.0, len(times))

    def hit(t: np.ndarray, i: int) -> np.ndarray:
        body = np.sin(_phase(f0 * (1 + 1.5 * np.exp(-t / 0.03)), sr)) * np.exp(-t / decay)
        return accents[i] * (body + snap * noise[: len(t)] * np.exp(-t / 0.03))

    return _add_events(np.zeros(n), sr, times, hit)


def _flute(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    freq, gate = _melody(rng, n, sr, 520, 1100, (2, 6), rng.uniform(0.8, 1.0), 0.07)
    freq = freq * _vibrato(n, sr, rng.uniform(4, 6), rng.uniform(0.004, 0.012), 0.2)
    amps = [1.0, rng.uniform(0.1, 0.35), rng.uniform(0.03, 0.15), rng.uniform(0.01, 0.05)]
    breath = rng.uniform(0.03, 0.1) * _band_noise(rng, n, sr, 1500, 6000)
    return gate * (_harmonic(freq, sr, amps) + breath)


def _siren(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    centre, depth, period = rng.uniform(650, 1150), rng.uniform(0.2, 0.4), rng.uniform(0.6, 2.2)
    lfo = np.sin(2 * np.pi * np.arange(n) / sr / period + rng.uniform(0, 2 * np.pi))
    if rng.random() < 0.3:  # "hi-lo" two-tone siren instead of a wail
        lfo = np.tanh(6 * lfo)
    return _harmonic(centre * (1 + depth * lfo), sr, [1.0, 0.4, 0.2, 0.1])


def _bird(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    times = _onsets(rng, n / sr, (0.07, 0.45))
    lengths = rng.uniform(0.04, 0.15, len(times))
    starts = rng.uniform(2500, 4500, len(times))
    sweeps = rng.uniform(0.6, 1.5, len(times))
    second = rng.uniform(0.05, 0.3)

    def chirp(t: np.ndarray, i: int) -> np.ndarray:
        t = t[: int(lengths[i] * sr)]
        freq = starts[i] * sweeps[i] ** (t / lengths[i])
        return _harmonic(freq, sr, [1.0, second]) * np.sin(np.pi * t / lengths[i]) ** 2

    out = np.zeros(n)
    for i, onset in enumerate(times):
        piece = chirp(np.arange(int(1.5 * sr)) / sr, i)
        start = int(onset * sr)
        out[start : start + len(piece)] += piece[: n - start]
    return out


def _engine(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    f0 = rng.uniform(30, 85) * (1 + 0.05 * _slow_noise(rng, n, 6))
    f0 *= np.linspace(1.0, rng.uniform(0.8, 1.3), n)
    tilt = rng.uniform(0.8, 1.3)
    tone = _harmonic(f0, sr, [k**-tilt for k in range(1, 25)])
    tone *= 1 + 0.35 * np.sin(_phase(f0 / 2, sr))
    rumble = rng.uniform(0.3, 0.8) * _band_noise(rng, n, sr, 20, rng.uniform(300, 800))
    return _unit_rms(tone) + rumble


_BELL_PARTIALS = np.array([0.5, 1.0, 1.183, 1.506, 2.0, 2.514, 2.662, 3.011, 4.166])
_BELL_AMPS = np.array([0.3, 1.0, 0.6, 0.4, 0.8, 0.3, 0.3, 0.2, 0.15])


def _bell(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    base = rng.uniform(350, 950)
    amps = _BELL_AMPS * rng.uniform(0.6, 1.4, len(_BELL_AMPS))
    taus = rng.uniform(0.6, 1.8) / (1 + 0.6 * _BELL_PARTIALS)
    times = _onsets(rng, n / sr, (0.45, 1.3))

    def strike(t: np.ndarray, i: int) -> np.ndarray:
        ratios, weights, decays = _BELL_PARTIALS[:, None], amps[:, None], taus[:, None]
        partials = weights * np.sin(2 * np.pi * base * ratios * t) * np.exp(-t / decays)
        return (partials * (base * ratios < 0.45 * sr)).sum(0)

    return _add_events(np.zeros(n), sr, times, strike)


def _violin(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    freq, gate = _melody(rng, n, sr, 196, 700, (2, 5), 1.0, rng.uniform(0.08, 0.15))
    freq = freq * _vibrato(n, sr, rng.uniform(5, 7), rng.uniform(0.006, 0.015), 0.25)
    tone = _harmonic(freq, sr, [1 / k for k in range(1, 21)])
    body = _resonances([(280, 80, 2.0), (rng.uniform(900, 1200), 250, 1.5), (2800, 600, 1.0)])
    return gate * _spectral(tone, sr, body)


def _dog(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    times = _onsets(rng, n / sr, (0.25, 0.8))
    f0, fall = rng.uniform(350, 650), rng.uniform(0.6, 0.85)
    length, rough = rng.uniform(0.1, 0.25), rng.uniform(0.3, 0.7)
    noise = _band_noise(rng, int(1.5 * sr), sr, 400, 3000)

    def bark(t: np.ndarray, i: int) -> np.ndarray:
        env = np.minimum(1.0, t / 0.005) * np.exp(-t / (length / 3)) * (t < length)
        tone = _harmonic(f0 * fall ** (t / length), sr, [k**-0.6 for k in range(1, 16)])
        return env * (tone + rough * noise[: len(t)])

    formants = _resonances(
        [(rng.uniform(700, 1100), 200, 3.0), (rng.uniform(1800, 2600), 400, 2.0)]
    )
    return _spectral(_add_events(np.zeros(n), sr, times, bark), sr, formants)


def _clock(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    interval = rng.uniform(0.3, 0.6)
    times = np.arange(rng.uniform(0, interval), n / sr, interval)
    ping = rng.uniform(1800, 3500)
    pitches = ping * np.where(np.arange(len(times)) % 2 == 0, 1.0, rng.uniform(0.8, 0.9))
    decay = rng.uniform(0.015, 0.03)
    noise = _band_noise(rng, int(1.5 * sr), sr, 2000, 6000)

    def tick(t: np.ndarray, i: int) -> np.ndarray:
        click = noise[: len(t)] * np.exp(-t / 0.004)
        return click + np.sin(2 * np.pi * pitches[i] * t) * np.exp(-t / decay)

    return _add_events(np.zeros(n), sr, times, tick)


def _rain(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    lo, hi = rng.uniform(600, 1200), rng.uniform(4500, 7000)
    hiss = _band_noise(rng, n, sr, lo, hi) * (0.85 + 0.15 * _slow_noise(rng, n, 8))
    times = np.sort(rng.uniform(0, n / sr, int(rng.uniform(8, 30) * n / sr)))
    pitches, levels = rng.uniform(1000, 4000, len(times)), rng.uniform(0.5, 2.0, len(times))

    def drop(t: np.ndarray, i: int) -> np.ndarray:
        freq = pitches[i] * (1 + 0.5 * t / 0.02)
        return levels[i] * np.sin(_phase(np.full_like(t, 1.0) * freq, sr)) * np.exp(-t / 0.01)

    return hiss + _add_events(np.zeros(n), sr, times, drop)


def _trumpet(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    freq, gate = _melody(rng, n, sr, 230, 700, (3, 8), rng.uniform(0.6, 0.9), 0.03)
    freq = freq * _vibrato(n, sr, rng.uniform(5, 6), rng.uniform(0.0, 0.006), 0.3)
    tilt = rng.uniform(0.4, 0.8)
    tone = _harmonic(freq, sr, [k**-tilt for k in range(1, 16)])
    bell = _resonances([(rng.uniform(1100, 1400), 300, 2.0), (2500, 500, 1.2)])
    return gate * _spectral(tone, sr, bell)


def _phone(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    on, off = rng.uniform(0.4, 1.0), rng.uniform(0.2, 0.6)
    high, low = rng.uniform(800, 1400), 1 / rng.uniform(1.15, 1.35)
    t = np.arange(n) / sr
    trill = np.sin(2 * np.pi * rng.uniform(12, 25) * t) > 0
    freq = high * np.where(trill, 1.0, low)
    cycle = np.mod(t - rng.uniform(0, on + off), on + off)
    gate = _smooth((cycle < on).astype(float), int(0.01 * sr))
    return gate * _harmonic(freq, sr, [1.0, 0.0, 0.3, 0.0, 0.15])


def _guitar(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    times = _onsets(rng, n / sr, (0.25, 0.6))
    pitches = 98 * 2 ** (rng.integers(0, 25, len(times)) / 12)
    pluck, sustain = rng.uniform(0.1, 0.3), rng.uniform(0.6, 1.5)
    k = np.arange(1, 21)[:, None]
    amps = np.abs(np.sin(np.pi * k * pluck)) / k
    decays = sustain / (1 + 0.15 * k**1.3)

    def note(t: np.ndarray, i: int) -> np.ndarray:
        partials = amps * np.sin(2 * np.pi * pitches[i] * k * t) * np.exp(-t / decays)
        return (partials * (pitches[i] * k < 0.45 * sr)).sum(0)

    return _add_events(np.zeros(n), sr, times, note)


def _car_horn(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    f1 = rng.uniform(340, 460)
    f2 = f1 * rng.uniform(1.2, 1.3)
    gate = np.zeros(n)
    for onset in _onsets(rng, n / sr, (0.5, 1.5)):
        a = int(onset * sr)
        gate[a : a + int(rng.uniform(0.3, 1.2) * sr)] = 1.0
    gate = _smooth(gate, int(0.015 * sr))
    amps = [k**-0.7 for k in range(1, 13)]
    chord = _harmonic(np.full(n, f1), sr, amps) + _harmonic(np.full(n, f2), sr, amps)
    return gate * _spectral(chord, sr, _resonances([(rng.uniform(1500, 2500), 500, 2.0)]))


def _fan(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    cutoff = rng.uniform(400, 1500)
    hum = _spectral(
        rng.standard_normal(n), sr, lambda f: 1 / np.sqrt(1 + (f / cutoff) ** 4) * (f > 30)
    )
    hum = _unit_rms(hum)
    blade = _harmonic(np.full(n, rng.uniform(60, 180)), sr, [1.0, 0.5, 0.3])
    wobble = 1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * np.arange(n) / sr)
    return wobble * (hum + rng.uniform(0.1, 0.4) * blade)


def _cat(rng: np.random.Generator, sr: int, n: int) -> np.ndarray:
    base, length = rng.uniform(400, 700), rng.uniform(0.4, 0.9)
    open_vowel, closed_vowel = rng.uniform(1500, 2200), rng.uniform(700, 1000)
    k = np.arange(1, 13)[:, None]

    def meow(t: np.ndarray, i: int) -> np.ndarray:
        t = t[: int(length * sr)]
        arc = np.sin(np.pi * t / length)
        f0 = base * (1 + 0.35 * arc**1.5)
        formant = closed_vowel + (open_vowel - closed_vowel) * arc
        weights = 0.15 / k + np.exp(-(((k * f0 - formant) / 600) ** 2))
        return _harmonic(f0, sr, weights) * arc**0.5

    out = np.zeros(n)
    for onset in _onsets(rng, n / sr - length, (length + 0.1, length + 0.6)):
        piece = meow(np.arange(n) / sr, 0)
        start = int(onset * sr)
        out[start : start + len(piece)] += piece[: n - start]
    return out


# ------------------------------------------------------------------------------------------------
# Shapes: lists of (polygon [P, 2] in unit coordinates, fill 1 or 0 to cut a hole), y down.


def _circle(cx: float = 0.0, cy: float = 0.0, r: float = 1.0, points: int = 64) -> np.ndarray:
    a = np.linspace(0, 2 * np.pi, points, endpoint=False)
    return np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1)


def _regular(sides: int, start: float = -np.pi / 2) -> np.ndarray:
    a = start + np.arange(sides) * 2 * np.pi / sides
    return np.stack([np.cos(a), np.sin(a)], 1)


def _star() -> np.ndarray:
    a = -np.pi / 2 + np.arange(10) * np.pi / 5
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _superellipse(power: float = 6.0) -> np.ndarray:
    """A rounded rectangle: |x|^p + |y|^p = 1 (stretched into a bar by the aspect ratio)."""
    a = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    c, s = np.cos(a), np.sin(a)
    return np.stack(
        [np.sign(c) * np.abs(c) ** (2 / power), np.sign(s) * np.abs(s) ** (2 / power)], 1
    )


def _dome() -> np.ndarray:
    a = np.linspace(np.pi, 2 * np.pi, 33)
    return np.stack([np.cos(a), 1 + 2 * np.sin(a)], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y], 1)


def _blades() -> list[tuple[np.ndarray, int]]:
    lobes = []
    for angle in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):
        lobe = (_circle() + [1.0, 0.0]) * [0.5, 0.22]
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        lobes.append((lobe @ rot.T, 1))
    return [*lobes, (_circle(r=0.22), 1)]


def _normalised(polygons: list[tuple[np.ndarray, int]]) -> list[tuple[np.ndarray, int]]:
    """Centre and scale a shape so that its unrotated box is [-1, 1] x [-1, 1]."""
    pts = np.concatenate([p for p, fill in polygons if fill])
    lo, hi = pts.min(0), pts.max(0)
    return [((p - (lo + hi) / 2) / ((hi - lo) / 2), fill) for p, fill in polygons]


_SQUARE = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
_SHAPE_POLYGONS: dict[str, list[tuple[np.ndarray, int]]] = {
    "disc": [(_circle(), 1)],
    "ellipse": [(_circle(), 1)],
    "capsule": [(_superellipse(), 1)],
    "dome": [(_dome(), 1)],
    "triangle": [(np.array([[0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]), 1)],
    "square": [(_SQUARE, 1)],
    "trapezoid": [(np.array([[-0.45, -1.0], [0.45, -1.0], [1.0, 1.0], [-1.0, 1.0]]), 1)],
    "hexagon": [(_regular(6, 0.0), 1)],
    "ring": [(_circle(), 1), (_circle(r=0.55), 0)],
    "diamond": [(np.array([[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), 1)],
    "star": [(_star(), 1)],
    "pentagon": [(_regular(5), 1)],
    "figure8": [(_circle(0, -0.45, 0.55), 1), (_circle(0, 0.3, 0.7), 1)],
    "cross": [(_SQUARE * [1, 0.3], 1), (_SQUARE * [0.3, 1], 1)],
    "blades": _blades(),
    "heart": [(_heart(), 1)],
}
SHAPES = {name: _normalised(polygons) for name, polygons in _SHAPE_POLYGONS.items()}

# Colour families: hue (degrees), saturation range, value range.
_COLOURS: dict[str, tuple[float, tuple[float, float], tuple[float, float]]] = {
    "red": (0, (0.6, 0.95), (0.55, 0.95)),
    "orange": (25, (0.6, 0.95), (0.6, 0.95)),
    "gold": (45, (0.55, 0.9), (0.6, 0.95)),
    "yellow": (58, (0.55, 0.95), (0.7, 1.0)),
    "green": (120, (0.45, 0.9), (0.4, 0.85)),
    "teal": (170, (0.4, 0.85), (0.45, 0.85)),
    "cyan": (190, (0.45, 0.9), (0.6, 0.95)),
    "blue": (222, (0.5, 0.95), (0.45, 0.9)),
    "purple": (275, (0.4, 0.85), (0.4, 0.85)),
    "magenta": (318, (0.45, 0.9), (0.55, 0.95)),
    "brown": (28, (0.45, 0.8), (0.3, 0.55)),
    "silver": (210, (0.03, 0.18), (0.65, 0.95)),
    "grey": (30, (0.0, 0.1), (0.3, 0.6)),
}
PRIMARY_COLOUR_P = 0.7  # else the class's second colour family (0.85) or any hue (0.15)


@dataclass(frozen=True)
class ToyClass:
    """One class: its look (shape, colour families, texture, proportions) and its sound."""

    name: str
    shape: str
    colours: tuple[str, str]
    texture: str
    aspect: tuple[float, float]  # width / height of the unrotated shape
    rotation: float  # maximum absolute rotation, degrees
    sound: Callable[[np.random.Generator, int, int], np.ndarray]
    looks: str
    sounds: str


TOY_CLASSES: tuple[ToyClass, ...] = (
    ToyClass("drum", "disc", ("red", "blue"), "rings", (0.75, 1.1), 180, _drum,
             "disc with concentric rings", "low pitch-dropping hits with a noise snap, 2-4.5 per s"),
    ToyClass("flute", "capsule", ("silver", "gold"), "dots", (2.8, 4.0), 35, _flute,
             "long rounded bar with a row of holes", "pure 520-1100 Hz notes, vibrato, breath"),
    ToyClass("siren", "dome", ("red", "blue"), "stripes", (1.1, 1.6), 10, _siren,
             "striped dome light", "a tone sweeping around 650-1150 Hz (wail or hi-lo)"),
    ToyClass("bird", "triangle", ("yellow", "green"), "speckle", (0.8, 1.3), 40, _bird,
             "speckled triangle", "short 2.5-4.5 kHz chirps sweeping up or down"),
    ToyClass("engine", "square", ("orange", "grey"), "checker", (0.85, 1.3), 15, _engine,
             "square with a chequered grille", "30-85 Hz buzzing harmonics plus rumble"),
    ToyClass("bell", "trapezoid", ("gold", "yellow"), "shine", (0.8, 1.1), 20, _bell,
             "shiny flared trapezoid", "inharmonic 350-950 Hz strikes ringing out"),
    ToyClass("violin", "ellipse", ("brown", "orange"), "wood", (0.45, 0.65), 30, _violin,
             "upright oval with wood grain", "bowed 196-700 Hz notes, vibrato, body resonance"),
    ToyClass("dog", "hexagon", ("brown", "gold"), "speckle", (0.9, 1.3), 30, _dog,
             "furry-speckled hexagon", "short harsh barks with falling pitch and noise"),
    ToyClass("clock", "ring", ("purple", "silver"), "shine", (0.9, 1.1), 0, _clock,
             "ring (round frame)", "regular tick-tock clicks with a 1.8-3.5 kHz ping"),
    ToyClass("rain", "diamond", ("cyan", "blue"), "dots", (0.55, 0.85), 15, _rain,
             "dotted tall diamond", "high band noise with droplet pings"),
    ToyClass("trumpet", "star", ("gold", "orange"), "shine", (0.9, 1.1), 36, _trumpet,
             "shiny five-point star", "bright brassy 230-700 Hz notes, staccato"),
    ToyClass("phone", "pentagon", ("magenta", "grey"), "stripes", (0.9, 1.1), 20, _phone,
             "striped pentagon", "trilled 800-1400 Hz ring bursts with pauses"),
    ToyClass("guitar", "figure8", ("brown", "red"), "wood", (0.6, 0.75), 25, _guitar,
             "figure-of-eight body with wood grain", "plucked 98-392 Hz notes decaying"),
    ToyClass("car horn", "cross", ("yellow", "red"), "stripes", (0.85, 1.15), 20, _car_horn,
             "striped plus sign", "two-note 340-600 Hz blasts"),
    ToyClass("fan", "blades", ("teal", "silver"), "solid", (0.9, 1.1), 180, _fan,
             "three-bladed propeller", "low-passed air noise with blade hum"),
    ToyClass("cat", "heart", ("grey", "orange"), "speckle", (0.9, 1.2), 20, _cat,
             "speckled heart", "rising-falling 400-950 Hz meows with moving formants"),
)  # fmt: skip
MAX_CLASSES = len(TOY_CLASSES)


# ------------------------------------------------------------------------------------------------
# One clip: everything random is decided here, rendering only follows it.


@dataclass(frozen=True)
class ToyObject:
    """One object in a clip; (x, y) is its sprite's top-left at the middle frame, v in px/frame."""

    category: int  # 0-based index into TOY_CLASSES
    sounding: bool
    scale: float  # half-height of the unrotated shape, px
    aspect: float
    angle: float  # degrees
    rgb: tuple[float, float, float]  # 0..255
    texture_period: float
    texture_angle: float
    texture_contrast: float
    texture_seed: int
    outline: bool
    x: int
    y: int
    vx: float
    vy: float


@dataclass(frozen=True)
class ToyClip:
    """All parameters of one clip: format, objects and seeds for the background and the sound."""

    index: int
    youtube_id: str
    start_seconds: int
    label: int  # the sounding object's class (0-based)
    width: int
    height: int
    fps: int
    num_frames: int
    sample_rate: int
    channels: int
    snr_db: float
    level_db: float
    scene_seed: int
    audio_seed: int
    objects: tuple[ToyObject, ...]
    offscreen_label: int | None = None  # class of a faint off-screen sound, if any
    offscreen_db: float = 0.0

    @property
    def file_name(self) -> str:
        return f"{self.youtube_id}_{self.start_seconds:06d}.mp4"

    @property
    def middle_frame(self) -> int:
        """The ground-truth frame: the last frame with pts <= duration / 2."""
        return self.num_frames // 2


def clip_rng(seed: int, index: int) -> np.random.Generator:
    """The RNG every random choice of clip `index` comes from (independent of worker count)."""
    return np.random.default_rng([seed, index])


def sample_toy_clip(seed: int, index: int, num_classes: int, seconds: float = 3.0) -> ToyClip:
    """Draw clip `index` of the dataset with this seed and number of classes (no rendering)."""
    _check_num_classes(num_classes)
    rng = clip_rng(seed, index)
    width, height = FRAME_SIZES[rng.choice(len(FRAME_SIZES), p=FRAME_SIZE_P)]
    fps = int(rng.choice(FPS_CHOICES, p=FPS_P))
    num_frames = round(seconds * fps)
    label = index % num_classes
    frame = (width, height, num_frames)
    area = rng.uniform(0.25, 0.75) if rng.random() < LARGE_P else _log_uniform(rng, 0.015, 0.25)
    objects = [_sample_object(rng, label, True, area, frame, [])]
    if num_classes > 1 and rng.random() < DISTRACTOR_P:
        others = [c for c in range(num_classes) if c != label]
        for category in rng.choice(others, size=1 + int(rng.random() < 0.4)):
            area = _log_uniform(rng, 0.015, 0.12)
            for shrink in (1.0, 0.5, 0.25):  # smaller if it does not fit beside the others
                distractor = _sample_object(
                    rng, int(category), False, area * shrink, frame, objects
                )
                if distractor is not None:
                    objects.append(distractor)
                    break
    offscreen = None
    if num_classes > 1 and rng.random() < OFFSCREEN_P:
        offscreen = int(rng.choice([c for c in range(num_classes) if c != label]))
    return ToyClip(
        index=index,
        youtube_id=f"toy{index:05d}",
        start_seconds=10 * int(rng.integers(0, 30)),
        label=label,
        width=width,
        height=height,
        fps=fps,
        num_frames=num_frames,
        sample_rate=int(rng.choice(SAMPLE_RATES, p=SAMPLE_RATE_P)),
        channels=2 if rng.random() < STEREO_P else 1,
        snr_db=float(rng.uniform(*SNR_DB)),
        level_db=float(rng.uniform(-28, -16)),
        scene_seed=int(rng.integers(2**31)),
        audio_seed=int(rng.integers(2**31)),
        objects=tuple(objects),
        offscreen_label=offscreen,
        offscreen_db=float(rng.uniform(*OFFSCREEN_DB)),
    )


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _check_num_classes(num_classes: int) -> None:
    if not 1 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"toy-av has 1..{MAX_CLASSES} classes, not {num_classes}")


def _sample_colour(rng: np.random.Generator, cls: ToyClass) -> tuple[float, float, float]:
    draw = rng.random()
    if draw < PRIMARY_COLOUR_P + (1 - PRIMARY_COLOUR_P) * 0.85:
        family = cls.colours[0] if draw < PRIMARY_COLOUR_P else cls.colours[1]
        hue, sat, val = _COLOURS[family]
        hue += rng.uniform(-12, 12)
    else:
        hue, sat, val = rng.uniform(0, 360), (0.4, 0.9), (0.45, 0.95)
    rgb = colorsys.hsv_to_rgb((hue % 360) / 360, rng.uniform(*sat), rng.uniform(*val))
    return tuple(255.0 * c for c in rgb)


def _sample_object(
    rng: np.random.Generator,
    category: int,
    sounding: bool,
    area: float,
    frame: tuple[int, int, int],
    placed: list[ToyObject],
) -> ToyObject | None:
    """An object whose box covers about `area` of the frame, inside it on every frame and clear
    of the `placed` objects (None when there is no room for it)."""
    width, height, num_frames = frame
    cls = TOY_CLASSES[category]
    aspect = float(rng.uniform(*cls.aspect))
    angle = float(rng.uniform(-cls.rotation, cls.rotation))
    unit_w, unit_h = _extent(cls.shape, aspect, angle)  # box size at scale 1
    scale = math.sqrt(area * width * height / (unit_w * unit_h))
    scale = min(scale, 0.95 * width / unit_w, 0.95 * height / unit_h)
    box_w, box_h = _sprite_size(cls.shape, aspect, angle, scale)
    steps = _motion_steps(num_frames)
    fields = {
        "category": category,
        "sounding": sounding,
        "scale": scale,
        "aspect": aspect,
        "angle": angle,
        "rgb": _sample_colour(rng, cls),
        "texture_period": float(rng.uniform(2.5, 5.0)),
        "texture_angle": float(rng.uniform(-20, 20)),
        "texture_contrast": float(rng.uniform(0.35, 0.8)),
        "texture_seed": int(rng.integers(2**31)),
        "outline": bool(rng.random() < 0.5),
    }
    taken = [_travel_box(other, steps) for other in placed]
    for _ in range(30):
        # Slight motion: up to 12% (8%) of the frame width (height) over the clip.
        vx = _velocity(rng, 0.12 * width, width - box_w, steps)
        vy = _velocity(rng, 0.08 * height, height - box_h, steps)
        x = _position(rng, vx * steps, width - box_w)
        y = _position(rng, vy * steps, height - box_h)
        obj = ToyObject(x=x, y=y, vx=vx, vy=vy, **fields)
        if not any(_overlap(_travel_box(obj, steps), box) for box in taken):
            return obj
    return None


def _velocity(rng: np.random.Generator, travel: float, room: int, steps: np.ndarray) -> float:
    """Pixels per motion step for a travel of up to `travel` px that fits in `room` px."""
    span = max(1, int(steps.max() - steps.min()))
    return float(rng.uniform(-1, 1) * min(travel, max(0, room - 2)) / span)


def _position(rng: np.random.Generator, offsets: np.ndarray, room: int) -> int:
    """Middle-frame position so that every frame's position (+ offset) lies in [0, room]."""
    lo = math.ceil(max(0.0, -offsets.min()))
    hi = math.floor(room - max(0.0, offsets.max()))
    return int(rng.integers(lo, max(lo, hi) + 1))


def _motion_steps(num_frames: int) -> np.ndarray:
    """Motion time per frame [N], 0 for the middle frame and its two neighbours.

    The pause at the middle makes the ground truth hold even for a reader that rounds the middle
    time to the neighbouring frame (e.g. one that uses the container duration, which AAC padding
    makes a few tens of ms longer than the video's).
    """
    d = np.arange(num_frames) - num_frames // 2
    return np.sign(d) * np.maximum(np.abs(d) - 1, 0)


def _travel_box(obj: ToyObject, steps: np.ndarray) -> tuple[float, ...]:
    """The region the object's sprite sweeps over the clip, with a 2-pixel gap."""
    w, h = _sprite_size(TOY_CLASSES[obj.category].shape, obj.aspect, obj.angle, obj.scale)
    xs, ys = obj.x + obj.vx * steps, obj.y + obj.vy * steps
    return xs.min() - 2, ys.min() - 2, xs.max() + w + 2, ys.max() + h + 2


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _shape_points(
    shape: str, aspect: float, angle: float, scale: float
) -> list[tuple[np.ndarray, int]]:
    """The shape's polygons in pixels around the object's centre (rotated, scaled)."""
    rad = math.radians(angle)
    rot = np.array([[math.cos(rad), -math.sin(rad)], [math.sin(rad), math.cos(rad)]])
    return [((pts * [aspect, 1.0]) @ rot.T * scale, fill) for pts, fill in SHAPES[shape]]


def _extent(shape: str, aspect: float, angle: float) -> tuple[float, float]:
    pts = np.concatenate([p for p, fill in _shape_points(shape, aspect, angle, 1.0) if fill])
    return float(np.ptp(pts[:, 0])), float(np.ptp(pts[:, 1]))


def _sprite_size(shape: str, aspect: float, angle: float, scale: float) -> tuple[int, int]:
    """(width, height) of an object's sprite: its box plus a 1-pixel margin on each side."""
    unit_w, unit_h = _extent(shape, aspect, angle)
    return math.ceil(unit_w * scale) + 2, math.ceil(unit_h * scale) + 2


# ------------------------------------------------------------------------------------------------
# Rendering: sprites, background, frames and audio of a ToyClip.

_SUPERSAMPLE = 4


def _sprite_alpha(obj: ToyObject) -> np.ndarray:
    """The object's coverage [h, w] in 0..1, anti-aliased by supersampling."""
    shape = TOY_CLASSES[obj.category].shape
    w, h = _sprite_size(shape, obj.aspect, obj.angle, obj.scale)
    polygons = _shape_points(shape, obj.aspect, obj.angle, obj.scale)
    origin = 1 - np.concatenate([p for p, fill in polygons if fill]).min(0)  # 1-pixel margin
    canvas = np.zeros((h * _SUPERSAMPLE, w * _SUPERSAMPLE), np.uint8)
    for pts, fill in polygons:
        fixed = np.round(((pts + origin) * _SUPERSAMPLE - 0.5) * 4).astype(np.int32)
        cv2.fillPoly(canvas, [fixed], 255 * fill, lineType=cv2.LINE_8, shift=2)
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255


def render_sprite(obj: ToyObject) -> tuple[np.ndarray, np.ndarray]:
    """The object's colours [h, w, 3] (float32, 0..255) and coverage [h, w] (0..1)."""
    cls = TOY_CLASSES[obj.category]
    alpha = _sprite_alpha(obj)
    h, w = alpha.shape
    # Pixel centres in the object's own frame: u, v in [-1, 1] over its unrotated box.
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    pts = np.concatenate(
        [p for p, fill in _shape_points(cls.shape, obj.aspect, obj.angle, obj.scale) if fill]
    )
    cx, cy = 1 - pts.min(0)
    rad = math.radians(obj.angle)
    px, py = xs - cx, ys - cy
    u = (px * math.cos(rad) + py * math.sin(rad)) / (obj.scale * obj.aspect)
    v = (-px * math.sin(rad) + py * math.cos(rad)) / obj.scale
    pattern = _TEXTURES[cls.texture](u * obj.aspect, v, obj) * obj.texture_contrast
    base = np.asarray(obj.rgb, np.float32)
    target = base + (255 - base) * 0.75 if cls.texture == "shine" else base * 0.35
    rgb = base + pattern[..., None] * (target - base)
    rgb *= np.clip(1 - 0.15 * (0.6 * u + 0.8 * v), 0.75, 1.2)[..., None]  # light from top-left
    if obj.outline:
        edge = np.clip(alpha - cv2.erode(alpha, np.ones((3, 3), np.uint8)), 0, 1)
        rgb *= (1 - 0.55 * edge)[..., None]
    return np.clip(rgb, 0, 255).astype(np.float32), alpha


def _stripes(u: np.ndarray, v: np.ndarray, obj: ToyObject) -> np.ndarray:
    a = math.radians(obj.texture_angle)
    return np.clip(
        0.5 + 1.5 * np.cos(np.pi * obj.texture_period * (u * math.cos(a) + v * math.sin(a))), 0, 1
    )


def _wood(u: np.ndarray, v: np.ndarray, obj: ToyObject) -> np.ndarray:
    warp = 0.12 * np.sin(3 * v + obj.texture_seed % 7) + 0.05 * np.sin(11 * v)
    return 0.5 + 0.5 * np.cos(2 * np.pi * 1.5 * obj.texture_period * (u + warp))


def _speckle(u: np.ndarray, v: np.ndarray, obj: ToyObject) -> np.ndarray:
    grid = np.random.default_rng(obj.texture_seed).standard_normal((12, 12)).astype(np.float32)
    cells = cv2.resize(grid, (u.shape[1], u.shape[0]), interpolation=cv2.INTER_CUBIC)
    return np.clip((cells - 0.3) * 2, 0, 1)


_TEXTURES: dict[str, Callable[[np.ndarray, np.ndarray, ToyObject], np.ndarray]] = {
    "solid": lambda u, v, obj: np.zeros_like(u),
    "rings": lambda u, v, obj: 0.5 + 0.5 * np.cos(np.pi * obj.texture_period * np.hypot(u, v)),
    "stripes": _stripes,
    "checker": lambda u, v, obj: (
        (np.floor(u * obj.texture_period) + np.floor(v * obj.texture_period)) % 2
    ),
    "dots": lambda u, v, obj: np.clip(
        (0.3 - np.hypot((u * obj.texture_period) % 2 - 1, (v * 1.5) % 2 - 1) / 2) / 0.06, 0, 1
    ),
    "speckle": _speckle,
    "shine": lambda u, v, obj: np.exp(-((u + 0.35) ** 2 + (v + 0.35) ** 2) / 0.12),
    "wood": _wood,
}


def _random_colour(
    rng: np.random.Generator, sat: tuple[float, float], val: tuple[float, float]
) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return 255 * np.asarray(rgb, np.float32)


def render_background(clip: ToyClip) -> np.ndarray:
    """A cluttered scene without the objects [H, W, 3] (float32, 0..255)."""
    rng = np.random.default_rng([clip.scene_seed, 0])
    w, h = clip.width, clip.height
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ys, xs = ys / h, xs / w
    c1, c2 = (_random_colour(rng, (0.05, 0.6), (0.15, 0.9)) for _ in range(2))
    layout = rng.integers(4)
    if layout == 0:  # gradient at a random angle
        a = rng.uniform(0, 2 * np.pi)
        ramp = np.clip(0.5 + (xs - 0.5) * math.cos(a) + (ys - 0.5) * math.sin(a), 0, 1)
        image = c1 + ramp[..., None] * (c2 - c1)
    elif layout == 1:  # horizon: sky over ground
        horizon = rng.uniform(0.3, 0.7) + 0.05 * np.sin(xs * rng.uniform(2, 8))
        sky = c1 * (0.8 + 0.4 * ys[..., None])
        image = np.where((ys > horizon)[..., None], c2 * (0.7 + 0.3 * ys[..., None]), sky)
    elif layout == 2:  # room: wall, floor, a window
        floor = rng.uniform(0.55, 0.8)
        image = np.where((ys > floor)[..., None], c2, c1 * (0.85 + 0.15 * xs[..., None]))
        x0, y0 = rng.uniform(0.05, 0.6), rng.uniform(0.05, 0.3)
        window = (xs > x0) & (xs < x0 + rng.uniform(0.15, 0.35)) & (ys > y0) & (ys < floor - 0.1)
        image = np.where(window[..., None], 0.6 * image + 0.4 * 255, image)
    else:  # blotches of three colours
        c3 = _random_colour(rng, (0.05, 0.6), (0.15, 0.9))
        blend = cv2.resize(
            rng.random((4, 4, 2)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
        )
        image = c1 + blend[..., :1] * (c2 - c1) + blend[..., 1:] * (c3 - c1) * 0.5
    light = cv2.resize(
        rng.standard_normal((3, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC
    )
    image = np.clip(image * (1 + 0.15 * light[..., None]), 0, 255).astype(np.uint8)
    _draw_clutter(rng, image)
    if rng.random() < 0.5:  # fine grain
        image = np.clip(image + rng.normal(0, rng.uniform(2, 8), image.shape), 0, 255).astype(
            np.uint8
        )
    if rng.random() < 0.5:  # depth of field: the background slightly out of focus
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.2))
    return image.astype(np.float32)


def _draw_clutter(rng: np.random.Generator, image: np.ndarray) -> None:
    """Lines, curves and irregular polygons (no class shape) in random colours, in place."""
    h, w = image.shape[:2]
    for _ in range(int(rng.integers(3, 14))):
        colour = tuple(int(c) for c in _random_colour(rng, (0.0, 0.9), (0.1, 1.0)))
        kind = rng.integers(3)
        if kind == 0:
            p1, p2 = rng.uniform(0, 1, (2, 2)) * [w, h]
            cv2.line(
                image,
                tuple(p1.astype(int)),
                tuple(p2.astype(int)),
                colour,
                int(rng.integers(1, 4)),
                cv2.LINE_AA,
            )
        elif kind == 1:
            pts = np.cumsum(rng.normal(0, 0.15, (int(rng.integers(3, 7)), 2)), 0) + rng.uniform(
                0, 1, 2
            )
            cv2.polylines(
                image,
                [(pts * [w, h]).astype(np.int32)],
                False,
                colour,
                int(rng.integers(1, 3)),
                cv2.LINE_AA,
            )
        else:
            sides = int(rng.integers(5, 9))
            angles = np.sort(rng.uniform(0, 2 * np.pi, sides))
            radius = rng.uniform(3, 0.18 * min(w, h)) * rng.uniform(0.35, 1.0, sides)
            centre = rng.uniform(0, 1, 2) * [w, h]
            pts = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radius[:, None]
            cv2.fillPoly(image, [pts.astype(np.int32)], colour, cv2.LINE_AA)


def render_toy_video(clip: ToyClip) -> list[np.ndarray]:
    """The clip's frames, each [H, W, 3] uint8 RGB; objects move slightly, sensor noise varies."""
    background = render_background(clip)
    sprites = [(obj, *render_sprite(obj)) for obj in clip.objects]
    steps = _motion_steps(clip.num_frames)
    rng = np.random.default_rng([clip.scene_seed, 1])
    sigma = rng.uniform(0.5, 3.0)
    frames = []
    for step in steps:
        frame = background.copy()
        for obj, rgb, alpha in sprites:
            x, y = obj.x + round(obj.vx * step), obj.y + round(obj.vy * step)
            region = frame[y : y + alpha.shape[0], x : x + alpha.shape[1]]
            region += alpha[..., None] * (rgb - region)
        frame += sigma * rng.standard_normal(frame.shape, dtype=np.float32)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def toy_clip_boxes(clip: ToyClip) -> list[list[float]]:
    """Each object's box [x, y, w, h] in the middle frame: the pixels it covers by half or more."""
    boxes = []
    for obj in clip.objects:
        rows, cols = np.nonzero(_sprite_alpha(obj) >= 0.5)
        x0, y0 = obj.x + int(cols.min()), obj.y + int(rows.min())
        boxes.append(
            [
                float(x0),
                float(y0),
                float(cols.max() - cols.min() + 1),
                float(rows.max() - rows.min() + 1),
            ]
        )
    return boxes


def _ambient(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Background noise [n], unit RMS: coloured noise of random slope and bandwidth, maybe hum."""
    slope, top = rng.uniform(0.0, 2.0), rng.uniform(3000, 0.48 * sr)
    noise = _spectral(
        rng.standard_normal(n),
        sr,
        lambda f: np.maximum(f, 20) ** (-slope / 2) * (f > 20) / (1 + (f / top) ** 8),
    )
    noise = _unit_rms(noise)
    if rng.random() < 0.25:  # mains hum
        hum = _harmonic(np.full(n, float(rng.choice([50, 60]))), sr, [1.0, 0.5, 0.3, 0.2])
        noise += rng.uniform(0.2, 0.6) * hum
    return _unit_rms(noise)


def render_toy_audio(clip: ToyClip) -> np.ndarray:
    """The clip's sound [C, T] float32 in [-1, 1]: the sounding class plus noise at the clip's SNR."""
    rng = np.random.default_rng([clip.audio_seed, 0])
    sr = clip.sample_rate
    n = round(clip.num_frames / clip.fps * sr)
    source = _unit_rms(TOY_CLASSES[clip.label].sound(rng, sr, n))
    noise = 10 ** (-clip.snr_db / 20) * _ambient(rng, n, sr)
    if clip.offscreen_label is not None:
        offscreen = TOY_CLASSES[clip.offscreen_label].sound(rng, sr, n)
        noise += 10 ** (clip.offscreen_db / 20) * _unit_rms(offscreen)
    if clip.channels == 1:
        mix = (source + noise)[None]
    else:  # panned towards the sounding object; the noise partly decorrelated between channels
        obj = clip.objects[0]
        width = _sprite_size(TOY_CLASSES[obj.category].shape, obj.aspect, obj.angle, obj.scale)[0]
        pan = ((obj.x + width / 2) / clip.width - 0.5) * rng.uniform(0.4, 1.0)
        other = 10 ** (-clip.snr_db / 20) * _ambient(rng, n, sr)
        left = math.sqrt(1 - pan) * source + noise
        mix = np.stack([left, math.sqrt(1 + pan) * source + 0.6 * noise + 0.8 * other])
    mix *= 10 ** (clip.level_db / 20) / (np.sqrt(np.mean(mix**2)) + 1e-12)
    mix /= max(1.0, np.abs(mix).max() / 0.98)
    return mix.astype(np.float32)


def write_toy_clip(path: str | os.PathLike, clip: ToyClip) -> Path:
    """Render and encode one clip to `path` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")
    try:
        write_av_clip(
            tmp,
            render_toy_video(clip),
            render_toy_audio(clip),
            fps=clip.fps,
            sample_rate=clip.sample_rate,
        )
        os.replace(tmp, path)
    except Exception as err:
        raise ToyDatasetError(f"{path}: could not write toy clip {clip.index} ({err})") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


# ------------------------------------------------------------------------------------------------
# The dataset: clips in parallel, then the CSV and the ground truth, then the meta file (last).


def make_toy_dataset(
    output_dir: str | os.PathLike,
    preset: str = "small",
    num_classes: int = 8,
    seed: int = 0,
    workers: int = 0,
) -> Path:
    """Write toy-av to `output_dir` and return it; do nothing if it is already there, complete.

    `workers`: processes that render and encode clips (0 = one per CPU core, 1 = this process).
    The result depends on (preset, num_classes, seed) only. A run that was killed resumes: the
    clips it finished are kept (each was written atomically), the rest are made.
    """
    if preset not in TOY_PRESETS:
        raise ValueError(f"unknown toy-av preset {preset!r}; choose from {sorted(TOY_PRESETS)}")
    _check_num_classes(num_classes)
    root = Path(output_dir)
    params = {"version": TOY_VERSION, "preset": preset, "num_classes": num_classes, "seed": seed}
    params.update(TOY_PRESETS[preset])
    meta = _read_json(root / META_FILE)
    if meta is not None and _params_of(meta) != params:
        raise ToyDatasetError(
            f"{root} already holds toy-av made with {_params_of(meta)}, not {params}; "
            "delete it or choose another output folder"
        )
    if meta is not None and _is_complete(root):
        logger.info("toy-av already complete at %s", root)
        return root
    video_dir = root / "video"
    video_dir.mkdir(parents=True, exist_ok=True)
    for stale in video_dir.glob(".*.tmp.mp4"):  # left by a killed run
        stale.unlink()
    if _read_json(root / _CLIPS_FILE) != params:  # clips of other parameters cannot stay
        for stale in video_dir.glob("toy[0-9][0-9][0-9][0-9][0-9]_[0-9]*.mp4"):
            stale.unlink()
    atomic_write_json(root / _CLIPS_FILE, params)

    per_class = params["clips_per_class"]
    total = num_classes * per_class
    task = partial(_make_clip, str(video_dir), seed, num_classes, params["seconds"])
    workers = workers or os.cpu_count() or 1
    with _mapper(workers) as imap:
        records = list(
            tqdm(imap(task, range(total)), total=total, desc="toy-av clips", unit="clip")
        )
    splits = _assign_splits(seed, num_classes, per_class)
    counts = _write_ground_truth(root, records, splits, num_classes, seed)
    names = [cls.name for cls in TOY_CLASSES[:num_classes]]
    atomic_write_json(root / META_FILE, {**params, "classes": names, "splits": counts}, indent=2)
    logger.info("toy-av: %d clips of %d classes at %s (%s)", total, num_classes, root, counts)
    return root


def ensure_toy_dataset(cfg: Any) -> Path:
    """Make the toy set at cfg.DATASETS.TOY.ROOT with TOY.{PRESET, NUM_CLASSES, SEED} if missing."""
    toy = cfg.DATASETS.TOY
    return make_toy_dataset(
        toy.ROOT,
        preset=toy.PRESET,
        num_classes=toy.NUM_CLASSES,
        seed=toy.SEED,
        workers=cfg.DATALOADER.PREPARE_WORKERS,
    )


def _params_of(meta: dict) -> dict:
    return {
        key: meta.get(key)
        for key in ("version", "preset", "num_classes", "seed", *TOY_PRESETS["tiny"])
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise ToyDatasetError(f"{path}: not valid JSON ({err}); delete it to regenerate") from None


def _is_complete(root: Path) -> bool:
    """The CSV, every annotation file and every clip the CSV lists exist."""
    names = [f"instances_{split}.json" for split in ("train", "val", "test")]
    names += [f"vggss_{split}.json" for split in ("val", "test")]
    csv_path = root / "vggsound.csv"
    if not csv_path.exists() or not all((root / "annotations" / n).exists() for n in names):
        return False
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    return all((root / "video" / f"{r[0]}_{int(r[1]):06d}.mp4").exists() for r in rows)


@contextlib.contextmanager
def _mapper(workers: int) -> Iterator[Callable]:
    """`imap` in order: in this process for one worker, else over a pool of fresh processes."""
    if workers <= 1:
        yield map
        return
    # spawn, not fork: the caller may hold threads (torch, OpenMP) that a fork would break.
    with multiprocessing.get_context("spawn").Pool(
        workers, initializer=cv2.setNumThreads, initargs=(1,)
    ) as pool:
        yield partial(pool.imap, chunksize=4)


def _make_clip(video_dir: str, seed: int, num_classes: int, seconds: float, index: int) -> dict:
    """Write clip `index` unless a finished file is there; return its ground-truth record."""
    clip = sample_toy_clip(seed, index, num_classes, seconds)
    path = Path(video_dir) / clip.file_name
    if not path.exists():
        write_toy_clip(path, clip)
    return {
        "index": clip.index,
        "youtube_id": clip.youtube_id,
        "start_seconds": clip.start_seconds,
        "file_name": clip.file_name,
        "label": clip.label,
        "width": clip.width,
        "height": clip.height,
        "fps": clip.fps,
        "num_frames": clip.num_frames,
        "objects": [
            {"category": obj.category, "sounding": obj.sounding, "bbox": box}
            for obj, box in zip(clip.objects, toy_clip_boxes(clip), strict=True)
        ],
    }


def _assign_splits(seed: int, num_classes: int, per_class: int) -> list[str]:
    """Split of every clip index: per class, a seeded shuffle cut 70/10/20 (train/val/test)."""
    n_val = max(1, round(per_class * SPLIT_FRACTIONS["val"])) if per_class >= 3 else 0
    n_test = max(1, round(per_class * SPLIT_FRACTIONS["test"])) if per_class >= 3 else 0
    splits = ["train"] * (num_classes * per_class)
    for category in range(num_classes):
        order = np.random.default_rng([seed, num_classes, category]).permutation(per_class)
        for rank in order[:n_val]:
            splits[int(rank) * num_classes + category] = "val"
        for rank in order[n_val : n_val + n_test]:
            splits[int(rank) * num_classes + category] = "test"
    return splits


def _write_ground_truth(
    root: Path, records: list[dict], splits: list[str], num_classes: int, seed: int
) -> dict[str, int]:
    """vggsound.csv, instances_<split>.json (COCO) and vggss_<split>.json; return split sizes."""
    names = [cls.name for cls in TOY_CLASSES[:num_classes]]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    for r in records:
        writer.writerow(
            [r["youtube_id"], r["start_seconds"], names[r["label"]], splits[r["index"]]]
        )
    atomic_write_text(root / "vggsound.csv", text.getvalue())
    categories = [
        {"id": i + 1, "name": name, "supercategory": "toy"} for i, name in enumerate(names)
    ]
    counts = {}
    for split in ("train", "val", "test"):
        chosen = [r for r in records if splits[r["index"]] == split]
        counts[split] = len(chosen)
        images = [
            {
                "id": r["index"] + 1,
                "file_name": r["file_name"],
                "width": r["width"],
                "height": r["height"],
                "youtube_id": r["youtube_id"],
                "start_seconds": r["start_seconds"],
                "fps": r["fps"],
                "num_frames": r["num_frames"],
                "frame_index": r["num_frames"] // 2,
                "frame_time": (r["num_frames"] // 2) / r["fps"],
            }
            for r in chosen
        ]
        annotations = [
            {
                "image_id": r["index"] + 1,
                "category_id": o["category"] + 1,
                "bbox": o["bbox"],
                "sounding": o["sounding"],
            }
            for r in chosen
            for o in r["objects"]
        ]
        info = {
            "description": f"toy-av {split} split, middle frame of each clip",
            "version": TOY_VERSION,
            "seed": seed,
        }
        save_coco(
            root / "annotations" / f"instances_{split}.json",
            make_coco(images, annotations, categories, info),
        )
        if split != "train":
            vggss = [_vggss_entry(r, names) for r in chosen]
            atomic_write_json(root / "annotations" / f"vggss_{split}.json", vggss)
    return counts


def _vggss_entry(record: dict, names: list[str]) -> dict:
    """The VGG-SS record of a clip: its sounding object's box, normalised to 0..1."""
    x, y, w, h = next(o["bbox"] for o in record["objects"] if o["sounding"])
    width, height = record["width"], record["height"]
    box = [x / width, y / height, (x + w) / width, (y + h) / height]
    return {"file": record["file_name"], "class": names[record["label"]], "bbox": [box]}
