"""The clip dataset of stage 1: a prepared frame and the log-spectrogram of the audio around it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from avdet.config import CfgNode
from avdet.data.prepare import load_manifest, load_wav

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
_STD = np.array(IMAGENET_STD, dtype=np.float32)


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3]; a clear error when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"{path}: cannot read image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def frame_to_tensor(rgb: np.ndarray, size: Sequence[int]) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> normalised float [3, size[0], size[1]] (ImageNet statistics)."""
    resized = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
    normalised = (resized.astype(np.float32) / 255.0 - _MEAN) / _STD
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def check_crop_area(area_range: Sequence[float]) -> tuple[float, float]:
    """INPUT.RANDOM_CROP_AREA as (low, high) with 0 < low <= high <= 1, else a ValueError."""
    values = tuple(float(v) for v in area_range)
    if len(values) != 2 or not 0.0 < values[0] <= values[1] <= 1.0:
        raise ValueError(
            "INPUT.RANDOM_CROP_AREA must be (low, high) with 0 < low <= high <= 1; "
            f"got {area_range}"
        )
    return values


def random_crop(rgb: np.ndarray, area_range: Sequence[float]) -> np.ndarray:
    """A window of `rgb` [H, W, 3] with its aspect ratio, area fraction uniform in `area_range`,
    at a uniform position (torch's RNG, so loader workers follow the seed)."""
    low, high = check_crop_area(area_range)
    if low == 1.0:
        return rgb
    height, width = rgb.shape[:2]
    side = math.sqrt(float(torch.empty(()).uniform_(low, high)))
    crop_h, crop_w = max(1, round(side * height)), max(1, round(side * width))
    top = int(torch.randint(0, height - crop_h + 1, ()))
    left = int(torch.randint(0, width - crop_w + 1, ()))
    return rgb[top : top + crop_h, left : left + crop_w]


class AVClipDataset(Dataset):
    """Prepared clips of the given splits; item: index, clip_id, frame [3, H, W], audio [T].

    The audio is the waveform window around the frame (INPUT.AUDIO.SECONDS at SAMPLE_RATE); the
    model turns a batch of them into spectrograms at once (on its device), which is much cheaper
    than one spectrogram per item in the loader.

    `train=True` adds the augmentations of stage 1 (horizontal flip, a random crop, a random shift
    of the audio window); evaluation and label recomputation use `train=False`, which is
    deterministic.
    """

    def __init__(
        self, cfg: CfgNode, prepared_dir: str | Path, splits: Sequence[str], train: bool
    ) -> None:
        self.root = Path(prepared_dir)
        wanted = set(splits)
        self.records = [r for r in load_manifest(self.root) if not wanted or r["split"] in wanted]
        if not self.records:
            raise ValueError(f"{self.root}: no prepared clips in splits {sorted(wanted)}")
        self.train = train
        self.frame_size = tuple(cfg.INPUT.FRAME_SIZE)
        self.flip = cfg.INPUT.RANDOM_FLIP and train
        self.crop_area = check_crop_area(cfg.INPUT.RANDOM_CROP_AREA) if train else (1.0, 1.0)
        self.jitter = cfg.INPUT.AUDIO.TRAIN_JITTER if train else 0.0
        self.seconds = cfg.INPUT.AUDIO.SECONDS
        self.sample_rate = cfg.INPUT.AUDIO.SAMPLE_RATE

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        rgb = random_crop(load_rgb(self.root / record["frame"]), self.crop_area)
        frame = frame_to_tensor(rgb, self.frame_size)
        centre = record["frame_time"]
        if self.jitter:
            centre += float(torch.empty(()).uniform_(-self.jitter, self.jitter))
        wave = load_wav(
            self.root / record["audio"],
            self.sample_rate,
            start=centre - self.seconds / 2,
            duration=self.seconds,
        )
        if self.flip and torch.rand(()) < 0.5:
            frame = frame.flip(-1)
        return {
            "index": index,
            "clip_id": record["clip_id"],
            "frame": frame,
            "audio": torch.from_numpy(wave),
        }
