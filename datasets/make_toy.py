"""Generate the built-in synthetic audio-visual dataset toy-av (real h264 + AAC mp4 clips).

  python datasets/make_toy.py --output datasets/toy-av --preset small
  python datasets/make_toy.py --output /tmp/toy --preset tiny --num-classes 4 --seed 1 --workers 2

Writes DIR/vggsound.csv, DIR/video/*.mp4 and DIR/annotations/ (COCO and VGG-SS ground truth for
the middle frame of every clip); see datasets/README.md. The same seed gives the same dataset;
running it again on a complete dataset does nothing, and a killed run resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from avdet.data.toy import MAX_CLASSES, TOY_PRESETS, ToyDatasetError, make_toy_dataset

_PER_CLASS = {name: preset["clips_per_class"] for name, preset in TOY_PRESETS.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output", required=True, help="dataset folder (DIR)")
    parser.add_argument(
        "--preset",
        choices=sorted(TOY_PRESETS),
        default="small",
        help=f"tiny: {_PER_CLASS['tiny']} clips per class (tests); "
        f"small: {_PER_CLASS['small']} per class (demo)",
    )
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same set")
    parser.add_argument(
        "--num-classes", type=int, default=8, help=f"sounding object classes, 1..{MAX_CLASSES}"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="processes (default 0: one per CPU; 1: no pool)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    try:
        root = make_toy_dataset(
            args.output,
            preset=args.preset,
            num_classes=args.num_classes,
            seed=args.seed,
            workers=args.workers,
        )
    except (ToyDatasetError, ValueError) as err:
        sys.exit(f"error: {err}")
    videos = list((root / "video").glob("*.mp4"))
    size = sum(p.stat().st_size for p in [*videos, *(root / "annotations").iterdir()])
    seconds = time.perf_counter() - start
    print(f"toy-av at {root}: {len(videos)} clips, {size / 2**20:.1f} MiB, {seconds:.1f} s")


if __name__ == "__main__":
    main()
