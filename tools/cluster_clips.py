#!/usr/bin/env python
"""Clustering-only mode: give every clip of a folder (or VGGSound CSV) a cluster id with a trained AV model.

    python tools/cluster_clips.py --config-file configs/toy/av.yaml \
        --input DIR|CSV [--videos DIR] --output OUT MODEL.WEIGHTS output/toy/av/model_final.pth

Writes OUT/clusters.csv (file, cluster, confidence), OUT/contact_sheets/cluster_<k>.png (a few
frames per cluster) and OUT/prepared/ (the decoded clips; a rerun reuses them). Works on clips
the model never saw; clips that cannot be read are listed in OUT/prepared/failures.jsonl.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

from avdet.config import load_config
from avdet.data.av_dataset import AVClipDataset, load_rgb
from avdet.data.indexes import load_clip_records
from avdet.data.prepare import prepare_clips
from avdet.engine.defaults import default_setup
from avdet.models.av_inference import predict_av
from avdet.models.av_task import load_av_model
from avdet.utils.io import atomic_write_text
from avdet.utils.visualize import caption, image_grid, save_png


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the stage-1 config")
    parser.add_argument("--input", required=True, type=Path, help="a folder of videos or a CSV")
    parser.add_argument("--videos", type=Path, help="video folder of a CSV (default: beside it)")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--per-cluster", type=int, default=8, help="frames per contact sheet")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, [*args.opts, "OUTPUT_DIR", str(args.output)])
    default_setup(cfg)
    if args.input.is_dir():
        records, _ = load_clip_records(folder=args.input)
    else:
        records, _ = load_clip_records(args.input, args.videos or args.input.parent / "video")
    prepared = args.output / "prepared"
    prepare_clips(
        records,
        prepared,
        sample_rate=cfg.INPUT.AUDIO.SAMPLE_RATE,
        workers=cfg.DATALOADER.PREPARE_WORKERS,
    )
    dataset = AVClipDataset(cfg, prepared, [], train=False)
    preds = predict_av(load_av_model(cfg), dataset, batch_size=cfg.TEST.IMS_PER_BATCH)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["file", "cluster", "confidence"])
    for record, cluster, conf in zip(
        dataset.records, preds.clusters, preds.confidence, strict=True
    ):
        writer.writerow([record["video"], int(cluster), f"{conf:.4f}"])
    atomic_write_text(args.output / "clusters.csv", table.getvalue())
    for cluster in sorted(set(preds.clusters.tolist())):
        members = [i for i, c in enumerate(preds.clusters) if c == cluster]
        members.sort(key=lambda i: -preds.confidence[i])
        tiles = [
            caption(load_rgb(prepared / dataset.records[i]["frame"]), f"{preds.confidence[i]:.2f}")
            for i in members[: args.per_cluster]
        ]
        save_png(
            args.output / "contact_sheets" / f"cluster_{cluster}.png",
            image_grid(tiles, 4, (120, 160)),
        )
    print(f"{len(dataset)} clips -> {args.output / 'clusters.csv'}")
    return args.output / "clusters.csv"


if __name__ == "__main__":
    main(sys.argv[1:])
