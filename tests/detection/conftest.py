"""A tiny real COCO dataset on disk: JPEG images of coloured shapes on noise, with their boxes."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

# Class k (category id 10 * (k + 1), not 1..C, so the label mapping is exercised): a filled
# rectangle of a fixed colour (BGR).
COLORS = ((40, 40, 230), (230, 90, 30), (40, 200, 40))


def write_shapes_coco(
    root: Path,
    num_images: int = 8,
    size: tuple[int, int] = (128, 96),
    num_classes: int = 2,
    negatives: int = 0,
    seed: int = 0,
) -> Path:
    """Write `root/images/*.jpg` and `root/train.json`; returns the JSON path.

    Each positive image has one large box of class i % num_classes; the last `negatives` images
    are pure noise without annotations. file_names are relative to `root`.
    """
    rng = np.random.default_rng(seed)
    width, height = size
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        image = rng.integers(60, 200, size=(height, width, 3), dtype=np.uint8)
        file_name = f"images/{i:03d}.jpg"
        images.append({"id": 100 + i, "file_name": file_name, "width": width, "height": height})
        if i < num_images - negatives:
            k = i % num_classes
            w, h = rng.integers(width // 3, width // 2), rng.integers(height // 3, height // 2)
            x, y = rng.integers(0, width - w), rng.integers(0, height - h)
            cv2.rectangle(image, (int(x), int(y)), (int(x + w - 1), int(y + h - 1)), COLORS[k], -1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": 100 + i,
                    "category_id": 10 * (k + 1),
                    "bbox": [float(x), float(y), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
        cv2.imwrite(str(root / file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    categories = [{"id": 10 * (k + 1), "name": f"shape_{k}"} for k in range(num_classes)]
    path = root / "train.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return path


@pytest.fixture(scope="session")
def shapes_coco(tmp_path_factory: pytest.TempPathFactory):
    """Factory: `shapes_coco(**kwargs)` writes a dataset into a fresh tmp folder."""

    def make(**kwargs) -> Path:
        return write_shapes_coco(tmp_path_factory.mktemp("shapes"), **kwargs)

    return make


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread per test module: on the shared 2-core machine, two threads competing
    with other processes made the detector tests about 10x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
