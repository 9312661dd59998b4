"""Stage 2: a localisation heatmap becomes pseudo-boxes in image coordinates.

Threshold at beta * max(H) + (1 - beta) * mean(H) on the heatmap resized to the image, take the
largest connected component (or up to `max_boxes` components whose area is at least
`min_area_frac` of the largest), and return their tight boxes.

Given the model input the map was computed on, the map is first placed where its cells look
(`place_on_input`: cell m of a stride-s map at input pixel s*m) and that input then stretched to
the image, as the frame was; stretching the map corner to corner instead moves every box by up
to half a cell, which on a small object is a good part of its IoU.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from avdet.evaluation.localization import place_on_input


def heatmap_to_boxes(
    heatmap: np.ndarray,
    image_size: tuple[int, int],
    beta: float = 0.5,
    max_boxes: int = 1,
    min_area_frac: float = 0.5,
    min_box_size: int = 4,
    input_size: Sequence[int] | None = None,
) -> list[tuple[float, float, float, float]]:
    """Boxes (x0, y0, x1, y1) in pixels of an image of `image_size` (height, width), best first.

    heatmap: [h, w] float; input_size: the (height, width) of the model input it was computed on
    (None: the map is stretched over the image). Returns [] when nothing survives (a flat heatmap,
    or every component smaller than `min_box_size` pixels on a side).
    """
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D [h, w]; got shape {heatmap.shape}")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must lie in [0, 1]; got {beta}")
    height, width = image_size
    if input_size is not None:
        heatmap = place_on_input(heatmap, input_size)
    resized = cv2.resize(
        heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
    )
    peak, mean = float(resized.max()), float(resized.mean())
    if not np.isfinite(peak) or peak - mean <= 1e-12:
        return []
    mask = (resized >= beta * peak + (1.0 - beta) * mean).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    components = sorted(stats[1:count].tolist(), key=lambda s: s[cv2.CC_STAT_AREA], reverse=True)
    if not components:
        return []
    largest = components[0][cv2.CC_STAT_AREA]
    boxes = []
    for x, y, w, h, area in components[:max_boxes]:
        if area < min_area_frac * largest or w < min_box_size or h < min_box_size:
            continue
        boxes.append((float(x), float(y), float(x + w), float(y + h)))
    return boxes
