"""Stage 2 end to end: a trained AV model's heatmaps on the training clips -> pseudo COCO JSON."""

from __future__ import annotations

import logging
from pathlib import Path

from avdet.config import CfgNode
from avdet.data.av_dataset import AVClipDataset
from avdet.data.coco import load_coco, save_coco
from avdet.data.sources import DataSource
from avdet.models.av_inference import heatmap_test_args, predict_av
from avdet.models.av_model import AVModel
from avdet.pseudo.export import build_pseudo_coco, gt_annotations_by_file, pseudo_quality
from avdet.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

PSEUDO_JSON = "pseudo_train.json"
REPORT_JSON = "pseudo_report.json"


class NoPseudoBoxesError(ValueError):
    """No training frame produced a pseudo-box: nothing to train a detector on."""


def pseudo_label_config(cfg: CfgNode) -> CfgNode:
    """`cfg` with INPUT.FRAME_SIZE scaled by PSEUDO.FRAME_SCALE: the size at which the training
    frames' heatmaps are computed for the pseudo-boxes (the model is fully convolutional, so a
    larger frame gives a finer map)."""
    scale = float(cfg.PSEUDO.FRAME_SCALE)
    if scale <= 0:
        raise ValueError(f"PSEUDO.FRAME_SCALE must be > 0 (1 = INPUT.FRAME_SIZE); got {scale}")
    if scale == 1.0:
        return cfg
    size = tuple(max(1, round(side * scale)) for side in cfg.INPUT.FRAME_SIZE)
    return cfg.clone().defrost().merge_from_list(["INPUT.FRAME_SIZE", str(size)]).freeze()


def make_pseudo_labels(
    cfg: CfgNode, model: AVModel, source: DataSource, output_dir: str | Path
) -> dict:
    """Write OUTPUT_DIR/pseudo_train.json (COCO, images relative to the prepared folder) and a report.

    The report holds the counts (clips, images, boxes, frames without a box, dropped low-score
    clips) and, where instances_<split>.json ground truth exists, the pseudo-label quality.
    """
    output_dir = Path(output_dir)
    cfg = pseudo_label_config(cfg)
    dataset = AVClipDataset(cfg, source.prepared_dir, cfg.DATASETS.TRAIN, train=False)
    preds = predict_av(
        model,
        dataset,
        batch_size=cfg.TEST.IMS_PER_BATCH,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        **heatmap_test_args(cfg),
    )
    coco, counts = build_pseudo_coco(
        dataset.records, preds, cfg.MODEL.NUM_CLUSTERS, cfg.PSEUDO, input_size=dataset.frame_size
    )
    if not coco["annotations"]:
        raise NoPseudoBoxesError(
            f"no pseudo-box on any of {len(dataset)} training frames in {source.prepared_dir} "
            f"(PSEUDO.BETA={cfg.PSEUDO.BETA}, MIN_BOX_SIZE={cfg.PSEUDO.MIN_BOX_SIZE}); "
            "is the AV model trained?"
        )
    json_path = save_coco(output_dir / PSEUDO_JSON, coco)
    report = {
        "json": str(json_path),
        "image_dir": str(source.prepared_dir),
        "frame_size": list(dataset.frame_size),
        "counts": counts,
    }
    gt_files = [source.annotation(f"instances_{split}.json") for split in cfg.DATASETS.TRAIN]
    gt_files = [p for p in gt_files if p is not None]
    if gt_files:
        labels = {r["clip_id"]: r["label"] for r in dataset.records}
        gt = gt_annotations_by_file([load_coco(p) for p in gt_files])
        report["quality"] = pseudo_quality(coco, gt, labels)
    atomic_write_json(output_dir / REPORT_JSON, report, indent=2)
    logger.info("pseudo-labels: %s", report)
    return report
