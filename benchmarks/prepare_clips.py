"""Clip-preparation throughput (clips/s): avdet's prepare_clips next to ffmpeg called per clip.

  python benchmarks/prepare_clips.py [--workers 2] [--small 120] [--large 32] [--repeats 3]

Two generated sets of real mp4 files (h264 + AAC): "toy-like" (3 s, 160x120, 25 fps, 16 kHz mono)
and "VGGSound-like" (10 s, 640x360, 25 fps, 44.1 kHz stereo). The ffmpeg column does what the
original VGGSound scripts do, two ffmpeg calls per clip (the middle frame to JPEG, the audio to a
16 kHz mono wav), with the same number of parallel workers; it is skipped when ffmpeg is absent.
Prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from avdet.data.indexes import index_video_folder
from avdet.data.prepare import prepare_clips
from avdet.data.writer import write_av_clip

SETS = {
    # name: (seconds, (height, width), fps, sample_rate, channels)
    "toy-like: 3 s 160x120 16 kHz mono": (3.0, (120, 160), 25, 16000, 1),
    "VGGSound-like: 10 s 640x360 44.1 kHz stereo": (10.0, (360, 640), 25, 44100, 2),
}


def make_clip(
    path: Path, seconds: float, size: tuple[int, int], fps: int, rate: int, channels: int, seed: int
) -> None:
    """A textured background with a moving square, and a tone plus noise: real decoding work."""
    rng = np.random.default_rng(seed)
    height, width = size
    background = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    background = np.kron(background, np.ones((8, 8, 1), np.uint8))[:height, :width]
    side = max(height // 4, 2)
    frames = []
    for i in range(round(seconds * fps)):
        frame = np.roll(background, i, axis=1).copy()
        x = int((width - side) * (0.5 + 0.4 * np.sin(i / 10)))
        frame[height // 3 : height // 3 + side, x : x + side] = (255, 40, 40)
        frames.append(frame)
    t = np.arange(round(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
    audio = np.stack([tone + 0.05 * rng.standard_normal(len(t)) for _ in range(channels)])
    write_av_clip(path, frames, audio.astype(np.float32), fps=fps, sample_rate=rate)


def run_ffmpeg(ffmpeg: str, clip: Path, *, out_dir: Path, seconds: float) -> None:
    """The VGGSound-scripts way: one ffmpeg call for the frame, one for the audio."""
    quiet = [ffmpeg, "-nostdin", "-loglevel", "error", "-y"]
    subprocess.run(
        [
            *quiet,
            "-ss",
            str(seconds / 2),
            "-i",
            str(clip),
            "-frames:v",
            "1",
            "-q:v",
            "2",
            str(out_dir / f"{clip.stem}.jpg"),
        ],
        check=True,
    )
    subprocess.run(
        [
            *quiet,
            "-i",
            str(clip),
            "-vn",
            "-ac",
            "1",
            "-ar",
            "16000",
            "-acodec",
            "pcm_s16le",
            str(out_dir / f"{clip.stem}.wav"),
        ],
        check=True,
    )


def time_prepare(videos: Path, workers: int, repeats: int) -> tuple[float, float]:
    """Median wall seconds and CPU seconds of this process for prepare_clips over `repeats`
    fresh runs (pool start-up included; the CPU time only means something for 1 worker, which
    decodes in this process, and does not depend on what else the machine runs)."""
    records = index_video_folder(videos)
    walls, cpus = [], []
    for repeat in range(repeats):
        out = videos.parent / f"prep-{workers}-{repeat}"
        start, cpu_start = time.perf_counter(), time.process_time()
        summary = prepare_clips(records, out, workers=workers)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
        assert summary.done == len(records), summary
        shutil.rmtree(out)
    return statistics.median(walls), statistics.median(cpus)


def time_ffmpeg(ffmpeg: str, videos: Path, workers: int, seconds: float) -> float:
    out_dir = videos.parent / "ffmpeg"
    out_dir.mkdir()
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        call = functools.partial(run_ffmpeg, ffmpeg, out_dir=out_dir, seconds=seconds)
        list(pool.map(call, sorted(videos.iterdir())))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel workers (default 2)")
    parser.add_argument("--small", type=int, default=120, help="clips in the toy-like set")
    parser.add_argument("--large", type=int, default=32, help="clips in the VGGSound-like set")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement (median)")
    args = parser.parse_args()
    ffmpeg = shutil.which("ffmpeg")
    rows = []
    with tempfile.TemporaryDirectory(prefix="avdet-bench-") as tmp:
        for (name, spec), count in zip(SETS.items(), (args.small, args.large), strict=True):
            videos = Path(tmp, name.split(":")[0], "video")
            for i in range(count):
                make_clip(videos / f"clip{i:03d}.mp4", *spec, seed=i)
            megabytes = sum(p.stat().st_size for p in videos.iterdir()) / 2**20
            wall_1, cpu_1 = time_prepare(videos, 1, args.repeats)
            wall_n, _ = time_prepare(videos, args.workers, args.repeats)
            cells = [
                f"{1000 * cpu_1 / count:.0f}",
                f"{count / wall_1:.1f}",
                f"{count / wall_n:.1f}",
            ]
            ffmpeg_cell = "n/a (ffmpeg not installed)"
            if ffmpeg:
                ffmpeg_cell = f"{count / time_ffmpeg(ffmpeg, videos, args.workers, spec[0]):.1f}"
            rows.append(
                f"| {name} | {count} | {megabytes:.1f} | {' | '.join(cells)} | {ffmpeg_cell} |"
            )

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs; median of {args.repeats} runs")
    print(f"ffmpeg: {ffmpeg or 'not installed, column skipped'}\n")
    print(
        "| set | clips | MB | avdet CPU ms per clip | avdet, 1 worker (clips/s) | "
        f"avdet, {args.workers} workers (clips/s) | ffmpeg CLI, 2 calls per clip, "
        f"{args.workers} workers (clips/s) |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
