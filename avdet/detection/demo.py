"""Run a trained (and named) detector on images or a video and draw the named boxes. Images only:
no audio is needed at inference."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import torch
from torch import nn

from avdet.data.av_dataset import load_rgb
from avdet.data.video import displayed_rgb
from avdet.data.writer import write_av_clip
from avdet.detection.dataset import CategoryMap
from avdet.utils.visualize import draw_detections, save_png

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


def load_names(
    mapping_path: str | os.PathLike | None, categories: CategoryMap
) -> tuple[dict[int, int | None], dict[int, str]]:
    """(cluster id -> class id or None, id -> display name) from a match_clusters mapping.

    Without a mapping the detector's own categories are shown (e.g. `cluster_3`).
    """
    own = dict(zip(categories.category_ids, categories.names, strict=True))
    if not mapping_path:
        return {c: c for c in own}, own
    record = json.loads(Path(mapping_path).read_text())
    target = {int(c["cluster_id"]): c["class_id"] for c in record["clusters"]}
    names = {
        int(c["class_id"]): c["class_name"]
        for c in record["clusters"]
        if isinstance(c["class_id"], int)
    }
    names.update(
        {c["class_id"]: "unknown" for c in record["clusters"] if c["class_id"] == "unknown"}
    )
    return target, names


@torch.no_grad()
def detect(model: nn.Module, rgb: np.ndarray, categories: CategoryMap, mapping: dict) -> list[dict]:
    """Named COCO-style detections (xywh) of one RGB uint8 image; unmatched clusters dropped."""
    device = next(model.parameters()).device
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float().div(255).to(device)
    output = model([tensor])[0]
    detections = []
    for box, label, score in zip(
        output["boxes"].tolist(), output["labels"].tolist(), output["scores"].tolist(), strict=True
    ):
        named = mapping.get(categories.category_id(label))
        if named is not None:
            x0, y0, x1, y1 = box
            detections.append(
                {"category_id": named, "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
            )
    return detections


def iter_inputs(path: Path) -> Iterator[Path]:
    """An image, a video, or every image and video under a folder (sorted)."""
    if path.is_dir():
        yield from sorted(
            p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
        )
    elif path.is_file():
        yield path
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")


def annotate_video(
    model: nn.Module,
    path: Path,
    output: Path,
    categories: CategoryMap,
    mapping: dict,
    names: dict,
    min_score: float,
) -> Path:
    """Every frame of `path` with its named boxes, written as an mp4 at the same frame rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = stream.average_rate or 25
        frames = [
            draw_detections(rgb, detect(model, rgb, categories, mapping), names, min_score)
            for rgb in (displayed_rgb(f, stream) for f in container.decode(stream))
        ]
    return write_av_clip(output, frames, None, fps=fps)


def run_demo(
    model: nn.Module,
    input_path: Path,
    output_dir: Path,
    categories: CategoryMap,
    mapping_path: str | None,
    min_score: float = 0.5,
) -> list[Path]:
    """Annotate every input into output_dir (PNG per image, mp4 per video); returns the files."""
    mapping, names = load_names(mapping_path, categories)
    model.eval()
    written = []
    for path in iter_inputs(input_path):
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            written.append(
                annotate_video(
                    model,
                    path,
                    output_dir / f"{path.stem}_detections.mp4",
                    categories,
                    mapping,
                    names,
                    min_score,
                )
            )
        else:
            rgb = load_rgb(path)
            drawn = draw_detections(rgb, detect(model, rgb, categories, mapping), names, min_score)
            written.append(output_dir / f"{path.stem}_detections.png")
            save_png(written[-1], drawn)
    return written
