"""Sound-source localisation metrics with the VGG-SS protocol: cIoU, AUC, cIoU ceiling, pointing.

The protocol follows the public LVS / EZ-VSL evaluation code, so numbers are comparable with the
literature when ``mode="median"``:

- Ground truth: each normalised box ``[xmin, ymin, xmax, ymax]`` is clipped to [0, 1] and scaled
  to pixels with ``int(v * size)`` (truncation); the mask is ``mask[ymin:ymax, xmin:xmax] = 1``
  (end-exclusive), the union over the boxes of the image.
- Prediction: the heatmap is resized to ``size x size`` by bilinear interpolation with
  corner-aligned sampling (what ``F.interpolate(..., align_corners=True)`` does in the reference
  code), min-max normalised, then binarised by one of three modes:
  ``median`` (VGG-SS): keep ``map >= t`` with ``t = sort(map.ravel())[N // 2]`` (the reference's
  threshold; without ties exactly ``N - N // 2`` pixels, i.e. half of them, are kept);
  ``fixed``: keep ``map >= fixed_value``; ``adaptive``: keep the ``n`` highest pixels, ``n`` = the
  ground-truth pixel count (``map >= sort(map.ravel())[N - n]``; ties may keep a few more).
- cIoU = sum(pred * gt) / (sum(gt) + sum(pred * [gt == 0])).

Corner alignment is right for a map that already has the image's pixels, but it stretches a
coarse feature map: cell m of a stride-s map looks at input pixel s * m (`place_on_input`), and
corner alignment puts it at m * (H - 1) / (h - 1), up to s - 1 pixels further toward the bottom
and right. cIoU and AUC keep it (they are the protocol, comparable with published numbers); the
pointing game, which is ours, can look up the maximum of the map placed on the model's input
instead (``frame_size``), where the model points.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import auc as sklearn_auc
from tqdm import tqdm

logger = logging.getLogger(__name__)

THRESHOLD_MODES = ("median", "fixed", "adaptive")
# Success-rate curve of the reference code: cIoU thresholds 0.05 * i for i in 0..20.
AUC_THRESHOLDS = [0.05 * i for i in range(21)]

Box = Sequence[float]


def _check_mode(mode: str, fixed_value: float) -> None:
    if mode not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold mode {mode!r}; expected one of {THRESHOLD_MODES}")
    if mode == "fixed" and not 0.0 < fixed_value <= 1.0:
        raise ValueError(f"fixed threshold must be in (0, 1], got {fixed_value}")


def boxes_to_mask(boxes_norm: Sequence[Box], size: int = 224) -> np.ndarray:
    """Union of normalised ``[xmin, ymin, xmax, ymax]`` boxes as a [size, size] uint8 {0, 1} mask.

    Coordinates are clipped to [0, 1] and converted with ``int(v * size)``; rows ``ymin:ymax`` and
    columns ``xmin:xmax`` are set (end-exclusive), as in the LVS / EZ-VSL code.
    """
    mask = np.zeros((size, size), dtype=np.uint8)
    for box in boxes_norm:
        if len(box) != 4:
            raise ValueError(f"a box needs 4 values [xmin, ymin, xmax, ymax], got {list(box)}")
        xmin, ymin, xmax, ymax = (int(min(max(float(v), 0.0), 1.0) * size) for v in box)
        mask[ymin:ymax, xmin:xmax] = 1
    return mask


def _interp_matrix(n_in: int, n_out: int, scale: float | None = None) -> np.ndarray:
    """[n_out, n_in] linear interpolation weights: output i samples input position i * scale
    (default: corners aligned, (n_in - 1) / (n_out - 1)); past the last input, its value."""
    if scale is None:
        scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.minimum(np.arange(n_out) * scale, n_in - 1)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights


def resize_heatmap(heatmap: np.ndarray, size: int = 224) -> np.ndarray:
    """Bilinear resize of a [h, w] map to [size, size] float64, corners aligned (as the reference).

    Separable and exact: ``A_y @ H @ A_x.T``; a map already at [size, size] is returned unchanged.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2 or heatmap.size == 0:
        raise ValueError(f"heatmap must be a non-empty [h, w] array, got shape {heatmap.shape}")
    if not np.isfinite(heatmap).all():
        raise ValueError("heatmap contains NaN or inf")
    if heatmap.shape == (size, size):
        return heatmap.copy()
    h, w = heatmap.shape
    return _interp_matrix(h, size) @ heatmap @ _interp_matrix(w, size).T


def place_on_input(heatmap: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A [h, w] feature map on the pixels of the [H, W] input (`shape`) it was computed from:
    cell (i, j) at pixel (i * H / h, j * W / w), bilinear in between, the last row and column
    carried to the border.

    That is where a cell of a torchvision ResNet looks: each stride-2 convolution or pooling is
    padded so that its output m is centred on input 2m, so cell m of a stride-s stage is centred
    on input pixel s * m.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    h, w = heatmap.shape
    height, width = int(shape[0]), int(shape[1])
    return _interp_matrix(h, height, h / height) @ heatmap @ _interp_matrix(w, width, w / width).T


def _minmax(values: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant map becomes all zeros."""
    span = values.max() - values.min()
    if span == 0:
        return np.zeros_like(values)
    return (values - values.min()) / span


def threshold_heatmap(
    heatmap: np.ndarray,
    mode: str = "median",
    size: int = 224,
    fixed_value: float = 0.5,
    gt_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Binarise a [h, w] heatmap into a [size, size] uint8 {0, 1} prediction (module docstring).

    ``gt_mask`` is needed by ``adaptive`` only (its pixel count sets how many pixels are kept).
    """
    _check_mode(mode, fixed_value)
    values = _minmax(resize_heatmap(heatmap, size))
    ranked = np.sort(values, axis=None)
    if mode == "median":
        threshold = ranked[ranked.size // 2]
    elif mode == "fixed":
        threshold = fixed_value
    else:
        if gt_mask is None:
            raise ValueError("threshold mode 'adaptive' needs gt_mask")
        keep = int(np.count_nonzero(gt_mask))
        if keep == 0:
            return np.zeros((size, size), dtype=np.uint8)
        threshold = ranked[ranked.size - keep]
    return (values >= threshold).astype(np.uint8)


def ciou(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """sum(pred * gt) / (sum(gt) + sum(pred * [gt == 0])) for two {0, 1} masks of one shape.

    An empty ground truth gives 0.0 (the reference code's value whenever the prediction is not
    empty too).
    """
    pred = np.asarray(pred_mask) > 0
    gt = np.asarray(gt_mask) > 0
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: pred {pred.shape} vs gt {gt.shape}")
    denominator = np.count_nonzero(gt) + np.count_nonzero(pred & ~gt)
    if denominator == 0:
        return 0.0
    return float(np.count_nonzero(pred & gt) / denominator)


def ciou_ceiling_image(
    gt_mask: np.ndarray, mode: str = "median", fixed_value: float = 0.5
) -> float:
    """The best cIoU any heatmap can reach on this image under ``mode`` (exact).

    median: at least k = N - N // 2 pixels are kept; the best prediction keeps every GT pixel plus
    the fewest others, so the ceiling is min(1, g / k) for g GT pixels (< 0.5 when the GT covers
    less than a quarter of the image). fixed: any mask not covering the whole image is reachable
    (min-max normalisation sets one pixel to 0, so a full-image GT reaches (N - 1) / N).
    adaptive: the GT mask itself is reachable, so 1.
    """
    _check_mode(mode, fixed_value)
    total = int(np.asarray(gt_mask).size)
    positives = int(np.count_nonzero(gt_mask))
    if positives == 0:
        return 0.0
    if mode == "median":
        return min(1.0, positives / (total - total // 2))
    if mode == "fixed" and positives == total:
        return (total - 1) / total
    return 1.0


def pointing_hit(heatmap: np.ndarray, gt_boxes: Sequence[Box], size: int = 224) -> bool:
    """Pointing game: is the heatmap's maximum inside a GT box?

    The map is resized as for cIoU and its first maximum (raster order) is looked up in the GT mask,
    so the pixel rounding is the one ``boxes_to_mask`` uses. Independent of the box size.
    """
    values = resize_heatmap(heatmap, size)
    row, col = np.unravel_index(int(np.argmax(values)), values.shape)
    return bool(boxes_to_mask(gt_boxes, size)[row, col])


def success_auc(cious: Sequence[float]) -> float:
    """Area under the success-rate curve over cIoU thresholds 0, 0.05, ..., 1 (trapezoid rule)."""
    values = np.asarray(cious, dtype=np.float64)
    rates = [float(np.mean(values >= t)) for t in AUC_THRESHOLDS]
    return float(sklearn_auc(AUC_THRESHOLDS, rates))


def evaluate_localization(
    heatmaps: Sequence[np.ndarray],
    gt_boxes: Sequence[Sequence[Box]],
    mode: str = "median",
    size: int = 224,
    fixed_value: float = 0.5,
    frame_size: Sequence[int] | None = None,
) -> dict:
    """Localisation metrics over a test set: one [h, w] heatmap and its normalised GT boxes per image.

    ``frame_size`` (height, width): the model input the heatmaps were computed on; ``pointing``
    then takes each map's maximum placed on it (`place_on_input`, module doc), and
    ``pointing_corner_aligned`` keeps the value from the protocol's resize. None: pointing on the
    protocol's resize only.

    Returns ``ciou50`` (fraction of images with cIoU >= 0.5), ``auc``, ``mean_ciou``,
    ``ciou50_ceiling`` (the ciou50 of the best possible heatmaps on the same images), ``pointing``,
    ``num_images`` and the protocol itself (``threshold_mode``, ``threshold_value``,
    ``heatmap_size``) so results are never compared across modes by mistake.
    """
    _check_mode(mode, fixed_value)
    if len(heatmaps) != len(gt_boxes):
        raise ValueError(f"{len(heatmaps)} heatmaps but {len(gt_boxes)} ground-truth entries")
    if not heatmaps:
        raise ValueError("no images to evaluate")
    cious, ceilings, hits, placed_hits = [], [], [], []
    empty_gt = 0
    for heatmap, boxes in tqdm(
        zip(heatmaps, gt_boxes, strict=True), total=len(heatmaps), desc="cIoU", disable=None
    ):
        gt = boxes_to_mask(boxes, size)
        empty_gt += int(not gt.any())
        resized = resize_heatmap(heatmap, size)
        cious.append(ciou(threshold_heatmap(resized, mode, size, fixed_value, gt), gt))
        ceilings.append(ciou_ceiling_image(gt, mode, fixed_value))
        hits.append(pointing_hit(resized, boxes, size))
        if frame_size is not None:
            placed = place_on_input(heatmap, frame_size)
            placed_hits.append(pointing_hit(placed, boxes, size))
    if empty_gt:
        logger.warning("%d of %d images have an empty ground-truth mask", empty_gt, len(cious))
    pointing = {"pointing": float(np.mean(hits))}
    if frame_size is not None:
        pointing = {
            "pointing": float(np.mean(placed_hits)),
            "pointing_corner_aligned": pointing["pointing"],
        }
    return {
        "threshold_mode": mode,
        "threshold_value": fixed_value if mode == "fixed" else None,
        "heatmap_size": size,
        "ciou50": float(np.mean(np.asarray(cious) >= 0.5)),
        "auc": success_auc(cious),
        "mean_ciou": float(np.mean(cious)),
        "ciou50_ceiling": float(np.mean(np.asarray(ceilings) >= 0.5)),
        **pointing,
        "num_images": len(cious),
    }


def _parse_box(path: Path, index: int, raw: object) -> list[float]:
    """One normalised box of record ``index``: 4 finite numbers with min <= max."""
    if not isinstance(raw, list | tuple) or len(raw) != 4:
        raise ValueError(f"{path}: record {index}: bbox entry {raw!r} is not 4 numbers")
    try:
        box = [float(v) for v in raw]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: record {index}: bbox entry {raw!r} is not numeric") from None
    if not all(math.isfinite(v) for v in box) or box[0] > box[2] or box[1] > box[3]:
        raise ValueError(f"{path}: record {index}: bbox {box} is not [xmin, ymin, xmax, ymax]")
    return box


def load_vggss_annotations(path: str | os.PathLike) -> dict[str, list[list[float]]]:
    """Read a VGG-SS JSON (a list of {"file", "class", "bbox": [[xmin, ymin, xmax, ymax], ...]}).

    Returns ``{file: [normalised boxes]}``. A malformed record, a record without boxes or a file
    listed twice is a ValueError naming the JSON file and the record index.
    """
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    annotations: dict[str, list[list[float]]] = {}
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            raise ValueError(f"{path}: record {index} has no string 'file'")
        name, boxes = record["file"], record.get("bbox")
        if not isinstance(boxes, list) or not boxes:
            raise ValueError(f"{path}: record {index} ({name}) has no 'bbox' list of boxes")
        if name in annotations:
            raise ValueError(f"{path}: record {index}: file {name!r} is listed twice")
        annotations[name] = [_parse_box(path, index, box) for box in boxes]
    return annotations
