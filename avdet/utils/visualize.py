"""Pictures a person looks at: boxes on frames, spectrograms, heatmap overlays, grids of tiles (PNG)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from avdet.utils.io import atomic_write_bytes

_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
]  # fmt: skip


def color_for(index: int) -> tuple[int, int, int]:
    return _PALETTE[index % len(_PALETTE)]


def draw_boxes(
    rgb: np.ndarray,
    boxes_xyxy: Sequence[Sequence[float]],
    labels: Sequence[str] = (),
    colors: Sequence[tuple[int, int, int]] = (),
    thickness: int = 2,
) -> np.ndarray:
    """A copy of `rgb` [H, W, 3] uint8 with pixel boxes (x0, y0, x1, y1) and their labels drawn."""
    out = np.ascontiguousarray(rgb.copy())
    for i, box in enumerate(boxes_xyxy):
        color = colors[i] if i < len(colors) else color_for(i)
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thickness)
        if i < len(labels) and labels[i]:
            cv2.putText(
                out,
                labels[i],
                (x0 + 2, max(y0 - 3, 10)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4,
                color,
                1,
                cv2.LINE_AA,
            )
    return out


def colorize(values: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A 2-D array, min-max normalised, as an RGB uint8 image (inferno), optionally resized (h, w)."""
    v = np.asarray(values, dtype=np.float32)
    v = (v - v.min()) / max(float(v.max() - v.min()), 1e-8)
    image = cv2.applyColorMap((v * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if size is not None:
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return image


def overlay_heatmap(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The heatmap [h, w] resized onto the frame [H, W, 3] and blended."""
    colored = colorize(heatmap, rgb.shape[:2])
    return cv2.addWeighted(rgb, 1 - alpha, colored, alpha, 0)


def image_grid(
    tiles: Sequence[np.ndarray], columns: int, tile_size: tuple[int, int], pad: int = 4
) -> np.ndarray:
    """Tiles (RGB uint8, any sizes) resized to tile_size (h, w) on a white grid."""
    rows = max(1, -(-len(tiles) // columns))
    h, w = tile_size
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = cv2.resize(tile, (w, h), interpolation=cv2.INTER_AREA)
    return grid


def caption(rgb: np.ndarray, text: str) -> np.ndarray:
    """The image with a one-line caption strip above it."""
    strip = np.full((16, rgb.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, rgb], axis=0)


def save_png(path: str | os.PathLike, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG, atomically."""
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buffer.tobytes())


def draw_detections(
    rgb: np.ndarray, detections: Sequence[dict], names: dict[int, str], min_score: float = 0.5
) -> np.ndarray:
    """COCO-result boxes (xywh) above `min_score` drawn with "name score" labels, colour per class."""
    kept = [d for d in detections if d["score"] >= min_score]
    boxes = [(x, y, x + w, y + h) for x, y, w, h in (d["bbox"] for d in kept)]
    labels = [f"{names.get(d['category_id'], d['category_id'])} {d['score']:.2f}" for d in kept]
    colors = [color_for(int(d["category_id"])) for d in kept]
    return draw_boxes(rgb, boxes, labels, colors)
