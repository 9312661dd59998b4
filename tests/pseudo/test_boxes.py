"""Heatmap -> pseudo-boxes: thresholding, connected components, image coordinates."""

from __future__ import annotations

import numpy as np
import pytest

from avdet.pseudo.boxes import heatmap_to_boxes


def blob_heatmap(shape, centres, sigma=1.0) -> np.ndarray:
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    h = np.zeros(shape, np.float32)
    for (cy, cx), amp in centres:
        h += amp * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))
    return h


def test_single_blob_gives_a_box_around_it_in_image_pixels():
    h = np.zeros((10, 10), np.float32)
    h[2:5, 6:9] = 1.0  # a 3x3 hot square in a 10x10 map
    boxes = heatmap_to_boxes(h, image_size=(200, 100), beta=0.5)
    assert len(boxes) == 1
    x0, y0, x1, y1 = boxes[0]
    # map cell (row 2..4, col 6..8) of 10x10 -> image 100 wide, 200 high: x ~ 60..90, y ~ 40..100
    assert x0 == pytest.approx(60, abs=8) and x1 == pytest.approx(90, abs=8)
    assert y0 == pytest.approx(40, abs=16) and y1 == pytest.approx(100, abs=16)


def test_largest_component_wins_and_max_boxes_keeps_others():
    h = blob_heatmap((32, 32), [((8, 8), 1.0), ((24, 24), 0.95)], sigma=2.5)
    h[8, 8] += 0.2  # the first blob also holds the peak
    one = heatmap_to_boxes(h, (32, 32), beta=0.5, max_boxes=1)
    two = heatmap_to_boxes(h, (32, 32), beta=0.5, max_boxes=2, min_area_frac=0.3)
    assert len(one) == 1 and len(two) == 2
    centres = sorted(((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in two)
    assert centres[0] == pytest.approx((8.5, 8.5), abs=1.5)
    assert centres[1] == pytest.approx((24.5, 24.5), abs=1.5)
    small_second = heatmap_to_boxes(h, (32, 32), beta=0.5, max_boxes=2, min_area_frac=0.99)
    assert small_second == one


def test_higher_beta_gives_tighter_boxes():
    h = blob_heatmap((40, 40), [((20, 20), 1.0)], sigma=5.0)
    loose = heatmap_to_boxes(h, (40, 40), beta=0.2)[0]
    tight = heatmap_to_boxes(h, (40, 40), beta=0.8)[0]
    assert (tight[2] - tight[0]) < (loose[2] - loose[0])


def test_flat_or_tiny_heatmaps_give_no_box():
    assert heatmap_to_boxes(np.ones((8, 8)), (64, 64)) == []
    h = np.zeros((64, 64), np.float32)
    h[10, 10] = 1.0  # one pixel: below min_box_size
    assert heatmap_to_boxes(h, (64, 64), min_box_size=4) == []
    with pytest.raises(ValueError, match="2-D"):
        heatmap_to_boxes(np.zeros((1, 8, 8)), (8, 8))
    with pytest.raises(ValueError, match="beta"):
        heatmap_to_boxes(h, (64, 64), beta=1.5)


def test_input_size_places_the_map_where_its_cells_look():
    # one hot cell (row 1, col 2) of a stride-8 map of a 32x40 input: a torchvision ResNet centres
    # that cell on input pixel (8, 16); stretching the map corner to corner puts it at (12, 20)
    h = np.zeros((4, 5), np.float32)
    h[1, 2] = 1.0
    x0, y0, x1, y1 = heatmap_to_boxes(h, (32, 40), input_size=(32, 40))[0]
    assert (x0 + x1) / 2 == pytest.approx(16, abs=1) and (y0 + y1) / 2 == pytest.approx(8, abs=1)
    x0, y0, x1, y1 = heatmap_to_boxes(h, (32, 40))[0]
    assert (x0 + x1) / 2 == pytest.approx(20, abs=1) and (y0 + y1) / 2 == pytest.approx(12, abs=1)
    # the input is stretched to the image as the frame was: an image twice the input's size
    x0, y0, x1, y1 = heatmap_to_boxes(h, (64, 80), input_size=(32, 40))[0]
    assert (x0 + x1) / 2 == pytest.approx(33, abs=2) and (y0 + y1) / 2 == pytest.approx(17, abs=2)
