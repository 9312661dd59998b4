#!/usr/bin/env python
"""Run the whole method: prepare -> stage 1 -> pseudo-boxes -> detector -> naming -> evaluation.

    python tools/run_pipeline.py --config-file configs/toy/pipeline.yaml [KEY VALUE ...]

On the toy config the toy set is generated first. Any VGGSound-layout set with ground truth works
by overrides: DATASETS.CSV path/vggsound.csv DATASETS.VIDEO_DIR path/video
DATASETS.ANNOTATION_DIR path (instances_{train,test}.json, vggss_test.json) [DATASETS.LABELS
labels.json] MODEL.NUM_CLUSTERS K. Each stage's output is reused when present, so a killed run
resumes where it stopped. Writes OUTPUT_DIR/report.md and OUTPUT_DIR/report.json.
"""

from __future__ import annotations

import argparse
import json
import sys

from avdet.config import load_config
from avdet.engine.defaults import default_setup
from avdet.pipeline import Pipeline


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    summary = Pipeline(cfg, args.config_file).run()
    print(json.dumps({k: v for k, v in summary.items() if k != "stages"}, indent=2))
    print(f"report: {cfg.OUTPUT_DIR}/report.md")
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
