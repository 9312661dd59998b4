"""Heatmap test-time refinement: each view's map lands where the base map's cells look; smoothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

from avdet.config import load_config
from avdet.evaluation.localization import place_on_input
from avdet.models.av_inference import heatmap_test_args
from avdet.models.heatmap_aug import augmented_heatmaps, smooth_heatmaps, view_heatmap_on_base


def test_the_base_view_is_returned_unchanged():
    maps = torch.rand(2, 5, 7)
    out = view_heatmap_on_base(maps, (40, 56), (5, 7), (40, 56), flip=False)
    torch.testing.assert_close(out, maps)


def test_a_mirrored_view_is_read_at_the_mirror_image_of_each_cell_centre():
    # Input 16 px wide, stride 4: base cell b looks at pixel 4b, which the mirrored view shows
    # at pixel 15 - 4b, that is its cell (15 - 4b) / 4 = 3.75 - b.
    view = torch.tensor([[[0.0, 1.0, 2.0, 3.0]]])  # [1, 1, 4]: one row, value = cell index
    out = view_heatmap_on_base(view, (4, 16), (1, 4), (4, 16), flip=True)
    expected = torch.tensor([[[3.0, 2.75, 1.75, 0.75]]])  # 3.75 is past the last cell: its value
    torch.testing.assert_close(out, expected)


def test_a_rescaled_view_is_read_at_the_same_scene_point():
    # View at twice the size, stride 8 on both: view cell c looks at view pixel 8c, i.e. at base
    # pixel (8c + 0.5) / 2 - 0.5. A map that holds that base pixel must give back each base
    # cell's own pixel, 8a, wherever that lies inside the view's cells.
    base_input, base_cells, view_input, view_cells = (8, 64), (1, 8), (16, 128), (2, 16)
    cols = (torch.arange(view_cells[1]) * 8 + 0.5) / 2 - 0.5
    view = cols.expand(1, view_cells[0], -1).clone()
    out = view_heatmap_on_base(view, base_input, base_cells, view_input, flip=False)
    torch.testing.assert_close(out[0, 0], torch.arange(8) * 8.0)


class _BrightnessModel(nn.Module):
    """A stride-4 visual tower that places its cells as torchvision's ResNets do (cell m centred
    on pixel 4m): two 3x3 stride-2 average pools of the brightness, one channel."""

    def embed_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = frames.mean(1, keepdim=True)
        for _ in range(2):
            x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
        return x, x


def _frame_with_square(top: int, left: int, size: int = 6) -> torch.Tensor:
    frame = torch.zeros(1, 3, 64, 80)
    frame[..., top : top + size, left : left + size] = 1.0
    return frame


def _placed_centroid(heatmap: torch.Tensor) -> np.ndarray:
    """(row, col) of the map's upper half placed on the 64x80 input, weighted by height."""
    placed = place_on_input(heatmap.numpy(), (64, 80))
    weights = np.clip(placed - 0.5 * placed.max(), 0.0, None)
    rows, cols = np.mgrid[:64, :80]
    return np.array([(weights * rows).sum(), (weights * cols).sum()]) / weights.sum()


@pytest.mark.parametrize("top, left", [(10, 9), (40, 61), (27, 34), (20, 50)])
def test_every_view_puts_a_small_object_where_it_is(top, left):
    model = _BrightnessModel()
    frame = _frame_with_square(top, left)  # 6x6: centre (top + 2.5, left + 2.5)
    centre = np.array([top + 2.5, left + 2.5])
    _, base = model.embed_frames(frame)
    base = base[:, 0]
    audio = torch.ones(1, 1)  # one-dimensional embeddings: the heatmap is the brightness map
    for scale in (0.75, 1.0, 1.25, 1.5):
        for flip in (False, True):
            view = augmented_heatmaps(model, frame, audio, base, (scale,), flip)
            offset = np.abs(_placed_centroid(view[0]) - centre).max()
            assert offset < 1.0, (scale, flip, offset)
    # a mirror image flipped back without the geometry is most of a cell (4 px) off
    _, mirrored = model.embed_frames(frame.flip(-1))
    assert np.abs(_placed_centroid(mirrored[0, 0].flip(-1)) - centre).max() > 2.5


def test_the_mean_over_views_with_only_the_base_view_is_the_base_map():
    model = _BrightnessModel()
    frame = torch.rand(2, 3, 64, 80)
    _, base = model.embed_frames(frame)
    out = augmented_heatmaps(model, frame, torch.ones(2, 1), base[:, 0], (1.0,), flip=False)
    torch.testing.assert_close(out, base[:, 0])


def test_the_config_turns_augmentation_on_and_rejects_scales_it_cannot_use():
    assert heatmap_test_args(load_config(None)) == {}
    on = ["TEST.HEATMAP_AUG.ENABLED", "True", "TEST.HEATMAP_AUG.FLIP", "False"]
    cfg = load_config(None, [*on, "TEST.HEATMAP_AUG.SCALES", "(1.0, 1.5)"])
    assert heatmap_test_args(cfg) == {"aug_scales": (1.0, 1.5), "aug_flip": False}
    for bad in ("()", "(1.0, 0.0)"):
        cfg = load_config(None, [*on, "TEST.HEATMAP_AUG.SCALES", bad])
        with pytest.raises(ValueError, match="TEST.HEATMAP_AUG.SCALES"):
            heatmap_test_args(cfg)


def test_the_config_turns_smoothing_on_alone_and_rejects_a_negative_sigma():
    assert heatmap_test_args(load_config(None, ["TEST.HEATMAP_SMOOTH", "0.75"])) == {
        "smooth_sigma": 0.75
    }
    with pytest.raises(ValueError, match="TEST.HEATMAP_SMOOTH"):
        heatmap_test_args(load_config(None, ["TEST.HEATMAP_SMOOTH", "-1.0"]))


@pytest.mark.parametrize("shape", [(3, 16, 20), (2, 1, 7), (1, 2, 3)])
@pytest.mark.parametrize("sigma", [0.5, 0.75, 3.0])
def test_smoothing_is_scipys_gaussian_filter_with_edges_extended(shape, sigma):
    # sigma 3 reaches 12 cells past maps of 1-3 cells: the edge value stands for all of them
    maps = torch.rand(*shape, dtype=torch.float64)
    expected = np.stack([gaussian_filter(m, sigma, mode="nearest") for m in maps.numpy()])
    np.testing.assert_allclose(smooth_heatmaps(maps, sigma).numpy(), expected, atol=1e-12)


def test_smoothing_takes_the_peak_from_one_cell_of_clutter_to_the_object():
    maps = torch.zeros(1, 12, 16)
    maps[0, 2, 3] = 1.0  # a thin stroke answers the sound at one cell
    maps[0, 7:10, 9:12] = 0.8  # the object, three cells wide, a little less
    maps[0, 8, 11] = 0.85  # with its own maximum on its edge
    smoothed = smooth_heatmaps(maps, 0.75)[0]
    assert divmod(int(maps[0].argmax()), 16) == (2, 3)
    assert divmod(int(smoothed.argmax()), 16) == (8, 10)  # the object's middle
