#!/usr/bin/env python
"""Draw a trained detector's named boxes on an image, a video or a folder of them (no audio needed).

    python tools/demo.py --config-file output/toy/pipeline/detector/config.yaml \
        --mapping output/toy/pipeline/detector/naming/mapping.json \
        --input video.mp4|image.jpg|folder --output DIR [--min-score 0.5] [KEY VALUE ...]

The config is the detector's (the one saved in its OUTPUT_DIR); its weights are MODEL.WEIGHTS or
the last checkpoint of its OUTPUT_DIR. --mapping (from tools/match_clusters.py or the pipeline)
turns cluster ids into class names; without it the clusters are shown.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avdet.config import load_config
from avdet.detection.demo import run_demo
from avdet.detection.task import detector_categories, load_detector


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--mapping", default=None, help="cluster -> class mapping JSON")
    parser.add_argument("--input", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--min-score", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    categories = detector_categories(cfg)
    model = load_detector(cfg, categories)
    written = run_demo(model, args.input, args.output, categories, args.mapping, args.min_score)
    for path in written:
        print(path)
    return written


if __name__ == "__main__":
    main(sys.argv[1:])
