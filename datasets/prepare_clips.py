"""Decode every clip of a dataset once into frames, 16 kHz wavs and a manifest (resumable).

  python datasets/prepare_clips.py --csv vggsound.csv --videos video/ --output prepared/
  python datasets/prepare_clips.py --folder my_videos/ --output prepared/ --workers 4

See avdet/data/prepare.py for the output layout. Running it again only does the clips that are
not yet in manifest.jsonl or failures.jsonl.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

from avdet.data.indexes import load_clip_records
from avdet.data.prepare import failure_kind, prepare_clips, read_exclude_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="VGGSound CSV: youtube_id,start_seconds,label,split")
    source.add_argument(
        "--folder", help="any folder of videos (recursive); the label is the parent folder"
    )
    parser.add_argument(
        "--videos", help="with --csv: folder holding <youtube_id>_<start:06d>.mp4 files"
    )
    parser.add_argument("--output", required=True, help="output folder (PREP)")
    parser.add_argument(
        "--workers", type=int, default=0, help="decoding processes (default 0: one per CPU)"
    )
    parser.add_argument("--splits", nargs="+", help="with --csv: keep only these splits")
    parser.add_argument(
        "--exclude", help="REPORT.json of datasets/check_clips.py: leave its flagged files out"
    )
    parser.add_argument(
        "--frame-time",
        type=float,
        default=None,
        help="which frame, in seconds on the file's timeline (default: the middle of each video)",
    )
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio rate (Hz)")
    parser.add_argument(
        "--min-rms-dbfs",
        type=float,
        default=-60.0,
        help="clips whose audio is quieter than this are skipped as silent (default -60)",
    )
    args = parser.parse_args(argv)
    if args.csv and not args.videos:
        parser.error("--csv needs --videos")
    if args.folder and (args.videos or args.splits):
        parser.error("--videos and --splits go with --csv, not --folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    records, problems = load_clip_records(args.csv, args.videos, args.folder, args.splits)
    exclude = read_exclude_report(args.exclude) if args.exclude else set()
    summary = prepare_clips(
        records,
        args.output,
        frame_time=args.frame_time,
        sample_rate=args.sample_rate,
        workers=args.workers,
        min_rms_dbfs=args.min_rms_dbfs,
        exclude=exclude,
    )
    for kind, count in sorted(Counter(failure_kind(p["reason"]) for p in problems).items()):
        print(f"CSV rows left out, {kind}: {count}")
    for problem in problems[:10]:
        print(f"  {problem['path']}: {problem['reason']}")
    print(summary)
    print(f"output: {args.output}/manifest.jsonl, {args.output}/failures.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
