"""Seconds per training step of the toy configs' models, in both memory formats of their convolutions.

  python benchmarks/train_step.py [--repeats 8] [--threads 2]

Stage 1 (configs/toy/av.yaml: both towers, batch 32 of 128x160 frames and 1 s of log-mel audio)
and the detector (configs/toy/detector.yaml: ResNet-18 FPN Faster R-CNN, batch 8 of 192x144
images with one box each), forward, backward and an SGD step on random inputs. The builders
return channels-last models; this measures what that buys against the contiguous layout. Inputs
stay contiguous, as the data loaders give them. Prints a markdown table; the median of
`--repeats` steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from avdet.config import load_config
from avdet.detection.model import build_detector
from avdet.models.av_model import build_av_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "toy"


def seconds_per_step(step: Callable[[], None], repeats: int) -> float:
    """Median wall time of `repeats` calls of `step`, after one warm-up call."""
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def av_step(model: nn.Module) -> Callable[[], None]:
    """One stage-1 step on a toy-sized batch (the loss only needs to reach every output)."""
    cfg = load_config(CONFIGS / "av.yaml")
    height, width = cfg.INPUT.FRAME_SIZE
    frames = torch.randn(cfg.SOLVER.IMS_PER_BATCH, 3, height, width)
    frames_per_second = cfg.INPUT.AUDIO.SAMPLE_RATE // cfg.INPUT.AUDIO.HOP_LENGTH
    steps = round(cfg.INPUT.AUDIO.SECONDS * frames_per_second) + 1
    audio = torch.randn(cfg.SOLVER.IMS_PER_BATCH, 1, cfg.INPUT.AUDIO.N_MELS, steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        out = model(frames, audio)
        loss = out.visual_map.mean() + out.audio_embedding.mean()
        loss = loss + sum(logits.mean() for logits in out.visual_logits + out.audio_logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def detector_step(model: nn.Module) -> Callable[[], None]:
    """One detector step on a toy-sized batch of random images with one box each."""
    images = [torch.rand(3, 144, 192) for _ in range(8)]
    targets = [
        {"boxes": torch.tensor([[20.0, 20.0, 90.0, 100.0]]), "labels": torch.tensor([1])}
        for _ in images
    ]
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {
        "stage 1 (av.yaml, batch 32)": (
            lambda: build_av_model(load_config(CONFIGS / "av.yaml")),
            av_step,
        ),
        "detector (detector.yaml, batch 8)": (
            lambda: build_detector(load_config(CONFIGS / "detector.yaml"), 8),
            detector_step,
        ),
    }
    print(
        f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}"
    )
    print("| model | contiguous, s/step | channels-last, s/step | speed-up |")
    print("| --- | --- | --- | --- |")
    for name, (build, make_step) in models.items():
        times = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            model = build().to(memory_format=fmt)
            times[fmt] = seconds_per_step(make_step(model), args.repeats)
        plain, last = times[torch.contiguous_format], times[torch.channels_last]
        print(f"| {name} | {plain:.3f} | {last:.3f} | {plain / last:.2f}x |")


if __name__ == "__main__":
    main()
