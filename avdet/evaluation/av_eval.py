"""Stage-1 evaluation: VGG-SS localisation and clustering quality of an AV model on the test splits.

Writes OUTPUT_DIR/inference/av_results.json and a PNG grid of heatmap overlays.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from avdet.config import CfgNode
from avdet.data.av_dataset import AVClipDataset, load_rgb
from avdet.data.sources import DataSource
from avdet.evaluation.clustering import cluster_metrics
from avdet.evaluation.localization import evaluate_localization, load_vggss_annotations
from avdet.models.av_inference import AVPredictions, heatmap_test_args, predict_av
from avdet.models.av_model import AVModel
from avdet.utils.io import atomic_write_json
from avdet.utils.visualize import caption, draw_boxes, image_grid, overlay_heatmap, save_png

logger = logging.getLogger(__name__)


def evaluate_av(cfg: CfgNode, model: AVModel, source: DataSource, output_dir: str | Path) -> dict:
    """Localisation (when VGG-SS boxes exist) and clustering metrics on DATASETS.TEST."""
    splits = list(cfg.DATASETS.TEST)
    dataset = AVClipDataset(cfg, source.prepared_dir, splits, train=False)
    heatmap_args = heatmap_test_args(cfg)
    preds = predict_av(
        model,
        dataset,
        batch_size=cfg.TEST.IMS_PER_BATCH,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        **heatmap_args,
    )
    results: dict = {
        "splits": splits,
        "num_clips": len(dataset),
        "heatmap_aug": {
            "scales": list(heatmap_args["aug_scales"]),
            "flip": heatmap_args["aug_flip"],
        }
        if "aug_scales" in heatmap_args
        else None,
        "heatmap_smooth": heatmap_args.get("smooth_sigma", 0.0),
    }
    boxes = _vggss_boxes(source, splits)
    records = dataset.records
    keyed = [(i, boxes.get(Path(r["video"]).stem)) for i, r in enumerate(records)]
    with_gt = [(i, b) for i, b in keyed if b]
    if with_gt:
        results.update(
            evaluate_localization(
                [preds.heatmaps[i] for i, _ in with_gt],
                [b for _, b in with_gt],
                mode=cfg.TEST.CIOU_THRESHOLD,
                size=cfg.TEST.HEATMAP_SIZE,
                fixed_value=cfg.TEST.CIOU_FIXED_VALUE,
                frame_size=cfg.INPUT.FRAME_SIZE if cfg.TEST.POINTING_ON_INPUT else None,
            )
        )
    else:
        logger.warning("no VGG-SS boxes for splits %s: localisation metrics skipped", splits)
    labels = [r["label"] for r in records]
    if any(labels):
        names = sorted(set(labels))
        label_ids = np.array([names.index(x) for x in labels])
        results.update(cluster_metrics(preds.clusters, label_ids))
    output_dir = Path(output_dir) / "inference"
    atomic_write_json(output_dir / "av_results.json", results, indent=2)
    if cfg.TEST.NUM_VIS > 0:
        save_png(
            output_dir / "heatmaps.png",
            heatmap_grid(dataset, preds, boxes, cfg.TEST.NUM_VIS),
        )
    logger.info("AV evaluation: %s", {k: v for k, v in results.items() if isinstance(v, float)})
    return results


def _vggss_boxes(source: DataSource, splits: list[str]) -> dict[str, list]:
    """VGG-SS boxes of the splits, keyed by file stem (`<id>_<start:06d>`, with or without .mp4)."""
    boxes: dict[str, list] = {}
    for split in splits:
        path = source.annotation(f"vggss_{split}.json")
        if path is not None:
            boxes.update({Path(k).stem: v for k, v in load_vggss_annotations(path).items()})
    return boxes


def heatmap_grid(
    dataset: AVClipDataset, preds: AVPredictions, boxes: dict[str, list], count: int
) -> np.ndarray:
    """Frames with their heatmap overlaid, the GT box in white, the cluster id as caption."""
    step = max(1, len(dataset) // count)
    tiles = []
    for i in list(range(0, len(dataset), step))[:count]:
        record = dataset.records[i]
        rgb = load_rgb(dataset.root / record["frame"])
        h, w = rgb.shape[:2]
        tile = overlay_heatmap(rgb, preds.heatmaps[i])
        gt = [
            (x0 * w, y0 * h, x1 * w, y1 * h)
            for x0, y0, x1, y1 in boxes.get(Path(record["video"]).stem, [])
        ]
        tile = draw_boxes(tile, gt, colors=[(255, 255, 255)] * len(gt))
        tiles.append(caption(tile, f"{record['label']} | c{preds.clusters[i]}"))
    return image_grid(tiles, columns=4, tile_size=(136, 160))
