"""tools/demo.py's core: named boxes drawn on images, on every frame of a video, and on a folder."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from avdet.detection.dataset import CategoryMap
from avdet.detection.demo import run_demo
from avdet.utils.visualize import save_png

CLUSTERS = CategoryMap([{"id": 1, "name": "cluster_0"}, {"id": 2, "name": "cluster_1"}])


class _FixedDetector(nn.Module):
    """Detects cluster_0 in the left half and cluster_1 in the right half of every image."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(()))  # demo reads the device from the parameters

    def forward(self, images: list[torch.Tensor]) -> list[dict]:
        outputs = []
        for image in images:
            height, width = image.shape[-2:]
            boxes = [[2, 2, width / 2 - 2, height - 3], [width / 2 + 2, 2, width - 3, height - 3]]
            outputs.append(
                {
                    "boxes": torch.tensor(boxes),
                    "labels": torch.tensor([1, 2]),
                    "scores": torch.tensor([0.9, 0.8]),
                }
            )
        return outputs


@pytest.fixture
def mapping(tmp_path) -> Path:
    """cluster_0 is named "dog" (class 7); cluster_1 matched no class and is dropped."""
    path = tmp_path / "mapping.json"
    clusters = [
        {"cluster_id": 1, "class_id": 7, "class_name": "dog"},
        {"cluster_id": 2, "class_id": None, "class_name": None},
    ]
    path.write_text(json.dumps({"clusters": clusters}))
    return path


def _grey(shape: tuple[int, int]) -> np.ndarray:
    return np.full((*shape, 3), 128, np.uint8)


def test_an_image_gets_its_named_boxes_and_not_the_dropped_clusters(tmp_path, mapping):
    image = tmp_path / "in" / "street.png"
    save_png(image, _grey((60, 100)))
    [out] = run_demo(_FixedDetector(), image, tmp_path / "out", CLUSTERS, str(mapping))
    assert out == tmp_path / "out" / "street_detections.png"
    drawn = np.asarray(Image.open(out).convert("RGB"))
    assert drawn.shape == (60, 100, 3)
    changed = np.abs(drawn.astype(int) - 128).sum(-1) > 0
    assert changed[:, :50].any()  # the named box (and its label) on the left
    assert not changed[:, 52:].any()  # cluster_1 is not drawn


def test_a_video_is_annotated_frame_by_frame_as_it_is_displayed(tmp_path, mapping, marked_video):
    # coded 64x32 with a quarter turn clockwise: shown 32 wide and 64 high
    video = marked_video(tmp_path / "in" / "phone.mp4", rotation=-90, frames=6)
    [out] = run_demo(_FixedDetector(), video, tmp_path / "out", CLUSTERS, str(mapping))
    assert out.name == "phone_detections.mp4"
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 6
    assert all(f.shape == (64, 32, 3) for f in frames)


def test_a_folder_is_walked_and_a_missing_input_is_an_error(tmp_path, mapping, marked_video):
    folder = tmp_path / "in"
    save_png(folder / "a.png", _grey((40, 40)))
    marked_video(folder / "nested" / "b.mp4")
    (folder / "notes.txt").write_text("not an image")
    written = run_demo(_FixedDetector(), folder, tmp_path / "out", CLUSTERS, None)
    assert sorted(p.name for p in written) == ["a_detections.png", "b_detections.mp4"]
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        run_demo(_FixedDetector(), folder / "missing.mp4", tmp_path / "out", CLUSTERS, None)
