"""Stage 2 end to end on the tiny toy set: the frame size the pseudo-boxes' heatmaps are made at."""

from __future__ import annotations

import json

import pytest
import torch

from avdet.data.sources import resolve_source
from avdet.models.av_model import build_av_model
from avdet.pseudo.make import make_pseudo_labels, pseudo_label_config


@pytest.mark.parametrize("scale, size", [(1.0, [64, 80]), (1.5, [96, 120]), (0.8, [51, 64])])
def test_frame_scale_sets_the_size_of_the_heatmaps_frames(tiny_av_cfg, tmp_path, scale, size):
    cfg = tiny_av_cfg(tmp_path, "PSEUDO.FRAME_SCALE", str(scale))
    torch.manual_seed(0)
    report = make_pseudo_labels(
        cfg, build_av_model(cfg).eval(), resolve_source(cfg), tmp_path / "pseudo"
    )
    assert report["frame_size"] == size
    coco = json.loads((tmp_path / "pseudo" / "pseudo_train.json").read_text())
    images = {image["id"]: image for image in coco["images"]}
    assert coco["annotations"]
    for ann in coco["annotations"]:  # boxes in the original frame's pixels, whatever the scale
        x, y, w, h = ann["bbox"]
        image = images[ann["image_id"]]
        assert 0 <= x < x + w <= image["width"] and 0 <= y < y + h <= image["height"]
    assert cfg.INPUT.FRAME_SIZE == (64, 80)  # the caller's config is left as it was


@pytest.mark.parametrize("scale", ["0", "-1.5"])
def test_a_frame_scale_that_is_not_positive_is_a_clear_error(tiny_av_cfg, tmp_path, scale):
    cfg = tiny_av_cfg(tmp_path, "PSEUDO.FRAME_SCALE", scale)
    with pytest.raises(ValueError, match="PSEUDO.FRAME_SCALE must be > 0"):
        pseudo_label_config(cfg)
