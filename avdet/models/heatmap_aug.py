"""Test-time refinement of heatmaps: the mean over each frame's rescaled and mirrored views, and
Gaussian smoothing.

A stride-s map is coarse, and one view's maximum can sit on clutter next to a small object; the
object answers the sound in every view, the clutter less consistently. Each view's map is sampled
where the base view's cells look (cell m of a stride-s map is centred on input pixel s * m, see
`avdet.evaluation.localization.place_on_input`), so the mean has the base map's shape and
geometry, and what consumes heatmaps (the VGG-SS protocol, the pointing game, pseudo-boxes) is
unchanged. Detectron2's TEST.AUG does the same for detections.

Smoothing over a cell or so serves the same end: a single cell that answers the sound (a stroke of
clutter) loses its peak, an object a few cells wide keeps it, and a blob's maximum moves to its
middle instead of an edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from avdet.models.av_model import AVModel, heatmaps


def _axis_grid(
    base_input: int, base_cells: int, view_input: int, view_cells: int, flip: bool
) -> torch.Tensor:
    """Where each base cell's centre lies in a view's map, as grid_sample coordinates in [-1, 1].

    Base cell a is centred on base pixel a * N / n. The view is the base resized to N' pixels
    (half-pixel centres, as F.interpolate with align_corners=False): base pixel p is view pixel
    (p + 0.5) * N' / N - 0.5, mirrored to N' - 1 - q when flipped; view pixel q is view cell
    q * n' / N'.
    """
    pixels = torch.arange(base_cells, dtype=torch.float64) * base_input / base_cells
    view = (pixels + 0.5) * view_input / base_input - 0.5
    if flip:
        view = view_input - 1 - view
    cells = view * view_cells / view_input
    if view_cells == 1:
        return torch.zeros_like(cells)
    return 2 * cells / (view_cells - 1) - 1


def view_heatmap_on_base(
    view_maps: torch.Tensor,
    base_input: Sequence[int],
    base_cells: Sequence[int],
    view_input: Sequence[int],
    flip: bool,
) -> torch.Tensor:
    """Maps [B, h', w'] of a view (input `view_input`, possibly mirrored) sampled at the centres of
    the base map's cells: [B, h, w] (`base_cells`), bilinear, edge values carried past the border."""
    ys = _axis_grid(base_input[0], base_cells[0], view_input[0], view_maps.shape[-2], False)
    xs = _axis_grid(base_input[1], base_cells[1], view_input[1], view_maps.shape[-1], flip)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # [h, w, (x, y)]
    grid = grid.to(view_maps).expand(view_maps.shape[0], -1, -1, -1)
    sampled = F.grid_sample(
        view_maps.unsqueeze(1), grid, mode="bilinear", padding_mode="border", align_corners=True
    )
    return sampled.squeeze(1)


def augmented_heatmaps(
    model: AVModel,
    frames: torch.Tensor,
    audio_embedding: torch.Tensor,
    base_maps: torch.Tensor,
    scales: Sequence[float],
    flip: bool,
) -> torch.Tensor:
    """The mean heatmap over the views `scales` x (as is, mirrored if `flip`) of `frames`
    [B, 3, H, W], on the grid of `base_maps` [B, h, w] (the maps of the frames as they are, which
    are reused for the view at scale 1)."""
    height, width = frames.shape[-2:]
    total = torch.zeros_like(base_maps, dtype=torch.float32)
    count = 0
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        view = frames
        if size != (height, width):
            view = F.interpolate(frames, size=size, mode="bilinear", antialias=True)
        for mirrored in (False, True) if flip else (False,):
            if size == (height, width) and not mirrored:
                maps = base_maps
            else:
                inputs = view.flip(-1) if mirrored else view
                maps = heatmaps(model.embed_frames(inputs)[1], audio_embedding)
            total += view_heatmap_on_base(
                maps.float(), (height, width), base_maps.shape[-2:], size, mirrored
            )
            count += 1
    return total / count


def smooth_heatmaps(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Heatmaps [B, h, w] convolved with a Gaussian of `sigma` cells (truncated at 4 sigma), the
    edge cells extended past the border: scipy.ndimage.gaussian_filter with mode "nearest"."""
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps)
    out = F.pad(maps.unsqueeze(1), (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1)).squeeze(1)
