"""Stage 1's frame augmentation: the random crop keeps the aspect ratio and its area range."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avdet.data.av_dataset import random_crop


def _gradient_image(height: int = 90, width: int = 160) -> np.ndarray:
    """Pixel (y, x) holds (y, x, 0), so a crop tells where it came from."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([ys, xs, np.zeros_like(ys)], axis=-1).astype(np.uint8)


def test_crops_are_windows_of_the_frame_with_its_aspect_and_area_in_range():
    torch.manual_seed(0)
    image = _gradient_image()
    areas = []
    for _ in range(200):
        crop = random_crop(image, (0.4, 0.9))
        h, w = crop.shape[:2]
        top, left = int(crop[0, 0, 0]), int(crop[0, 0, 1])
        np.testing.assert_array_equal(crop, image[top : top + h, left : left + w])
        assert abs(w / h - 160 / 90) < 0.05
        areas.append(h * w / (90 * 160))
    assert 0.39 <= min(areas) < 0.5 and 0.8 < max(areas) <= 0.91
    tops = {int(random_crop(image, (0.25, 0.25))[0, 0, 0]) for _ in range(50)}
    assert len(tops) > 10  # positions vary


def test_full_area_is_the_frame_itself_and_bad_ranges_are_errors():
    image = _gradient_image()
    assert random_crop(image, (1.0, 1.0)) is image
    for bad in ((0.0, 0.5), (0.8, 0.5), (0.5, 1.2), (0.5,)):
        with pytest.raises(ValueError, match="RANDOM_CROP_AREA"):
            random_crop(image, bad)
