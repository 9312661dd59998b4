#!/usr/bin/env python
"""Stage 2: turn a trained AV model's heatmaps on the training clips into a pseudo-labelled COCO set.

    python tools/make_pseudo_labels.py --config-file configs/toy/av.yaml \
        MODEL.WEIGHTS output/toy/av/model_final.pth [PSEUDO.BETA 0.5 ...]

Writes OUTPUT_DIR/pseudo/pseudo_train.json (COCO: categories cluster_0..K-1, file_name relative to
the prepared clip folder, one box per frame by default) and pseudo_report.json (counts and, where
ground truth exists, the pseudo-label quality). Without MODEL.WEIGHTS the last checkpoint in
OUTPUT_DIR is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avdet.config import load_config
from avdet.data.sources import ensure_prepared
from avdet.engine.defaults import default_setup
from avdet.models.av_task import load_av_model
from avdet.pseudo.make import make_pseudo_labels


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the stage-1 config")
    parser.add_argument("--output", default="", help="output folder (default OUTPUT_DIR/pseudo)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    output = Path(args.output or Path(cfg.OUTPUT_DIR) / "pseudo")
    default_setup(cfg.clone().defrost().merge_from_list(["OUTPUT_DIR", str(output)]).freeze())
    source = ensure_prepared(cfg)
    report = make_pseudo_labels(cfg, load_av_model(cfg), source, output)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
