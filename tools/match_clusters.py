#!/usr/bin/env python
"""Stage 4: name the detector's clusters from a handful of labelled images (Hungarian matching).

    python tools/match_clusters.py --labels L.json --output mapping.json \
        [--detections D.json] [--detector-config OUT/config.yaml [--image-dir DIR]] \
        [--results R.json] [--keep-unmatched {drop,unknown}] [--iou 0.5] [--votes {score,matched}]

L.json: COCO ground truth of a few images with real categories (as few as one image per class).
Votes come from D.json, the detector's COCO results on those images (image ids of L.json,
category ids = clusters), and/or, with --detector-config (a trained detector's config, e.g. its
OUTPUT_DIR/config.yaml), from the detector's ROI head classifying each labelled box (images under
--image-dir, default the config's DATASETS.IMAGE_DIR): one distribution over every cluster per
labelled box, the strongest evidence when there is one label per class. Writes the mapping
(cluster -> class, with the votes) and, for R.json (default D.json), the relabelled results with
the real category ids next to it (<output>_results.json; with neither --results nor
--detections, only the mapping is written).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avdet.config import load_config
from avdet.data.coco import load_coco
from avdet.detection.dataset import CocoDetectionDataset
from avdet.detection.inference import classify_boxes
from avdet.detection.task import detector_categories, load_detector
from avdet.matching.hungarian import (
    UNKNOWN,
    VOTES,
    agreement_matrix,
    match_clusters,
    relabel_detections,
    save_mapping,
)
from avdet.utils.io import atomic_write_json


def load_results(path: Path) -> list[dict]:
    """A COCO results file: a JSON list of {image_id, category_id, bbox, score}."""
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"{path}: cannot read detections ({exc})") from None
    if not isinstance(results, list) or not all(
        isinstance(d, dict) and {"image_id", "category_id", "bbox", "score"} <= d.keys()
        for d in results
    ):
        raise SystemExit(f"{path}: not a COCO results list of image_id/category_id/bbox/score")
    return results


def box_votes(config_file: Path, labels_path: Path, image_dir: str) -> tuple[list[dict], list[int]]:
    """The trained detector's class distribution on every labelled box, and its cluster ids."""
    cfg = load_config(config_file, [])
    categories = detector_categories(cfg)
    model = load_detector(cfg, categories)
    labelled = CocoDetectionDataset(labels_path, image_dir or cfg.DATASETS.IMAGE_DIR)
    return classify_boxes(model, labelled, categories), categories.category_ids


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--detections", type=Path, help="the detector's results on the labels")
    parser.add_argument(
        "--detector-config", type=Path, help="the trained detector's config: box votes"
    )
    parser.add_argument("--image-dir", default="", help="folder of the labels' file_names")
    parser.add_argument("--labels", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--results", type=Path, help="results to relabel (default: --detections)")
    parser.add_argument("--keep-unmatched", choices=("drop", UNKNOWN), default="drop")
    parser.add_argument("--iou", type=float, default=0.5, help="IoU for a detection to vote")
    parser.add_argument(
        "--votes",
        choices=VOTES,
        default="score",
        help="score: every overlapping detection votes with its score (default); "
        "matched: one vote per labelled box, COCO-style",
    )
    args = parser.parse_args(argv)

    labels = load_coco(args.labels)
    if not labels["annotations"]:
        raise SystemExit(f"{args.labels}: no labelled boxes")
    if args.detections is None and args.detector_config is None:
        raise SystemExit("give --detections, --detector-config or both: the votes come from them")
    if args.detector_config is not None and args.votes == "matched":
        raise SystemExit(
            "--votes matched takes one detection per labelled box, which would keep one cluster "
            "of each box's distribution from --detector-config: use --votes score"
        )
    detections = load_results(args.detections) if args.detections else []
    results = load_results(args.results) if args.results else detections
    clusters = {int(d["category_id"]) for d in detections + results}
    votes = list(detections)
    if args.detector_config is not None:
        scores, detector_clusters = box_votes(args.detector_config, args.labels, args.image_dir)
        votes += scores
        clusters.update(detector_clusters)
    clusters = sorted(clusters)
    agreement = agreement_matrix(votes, labels, args.iou, cluster_ids=clusters, votes=args.votes)
    if agreement.matrix.sum() == 0:
        raise SystemExit(
            f"{args.detections}: no detection overlaps a labelled box of {args.labels} "
            f"(IoU >= {args.iou}); are the image ids the same?"
            if args.detector_config is None
            else f"{args.labels}: no vote from the labelled boxes (and no detection over them)"
        )
    mapping = match_clusters(agreement.matrix, clusters, agreement.class_ids, args.keep_unmatched)
    class_names = {c["id"]: c["name"] for c in labels["categories"]}
    unknown_id = max(class_names) + 1 if args.keep_unmatched == UNKNOWN else None
    save_mapping(args.output, mapping, agreement, class_names)
    results_path = None
    if args.results or args.detections:  # something to rename
        results_path = args.output.with_name(args.output.stem + "_results.json")
        relabelled = relabel_detections(results, mapping, unknown_category_id=unknown_id)
        atomic_write_json(results_path, relabelled)
    named = sum(isinstance(v, int) for v in mapping.values())
    summary = {
        "mapping": str(args.output),
        "relabelled_results": str(results_path) if results_path else None,
        "clusters": len(clusters),
        "named_clusters": named,
        "votes": round(float(agreement.matrix.sum()), 4),
        "ignored_detections": agreement.num_ignored_detections,
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
