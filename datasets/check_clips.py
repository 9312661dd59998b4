"""Check a dataset's clips: still, silent, short, unreadable, duplicates and split overlap.

  python datasets/check_clips.py --csv vggsound.csv --videos video/ --output REPORT.json
  python datasets/check_clips.py --folder my_videos/ --output REPORT.json --workers 4
  python datasets/prepare_clips.py --csv vggsound.csv --videos video/ --output prepared/ \\
      --exclude REPORT.json

See avdet/data/hygiene.py and docs/data_hygiene.md. Measurements are cached in
REPORT.json.partial.jsonl, so a killed run resumes and a rerun with other thresholds is quick.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

from avdet.data import hygiene
from avdet.data.indexes import load_clip_records
from avdet.data.prepare import failure_kind


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv", help="VGGSound CSV: youtube_id,start_seconds,label,split")
    source.add_argument("--folder", help="any folder of videos (recursive)")
    parser.add_argument(
        "--videos", help="with --csv: folder holding <youtube_id>_<start:06d>.mp4 files"
    )
    parser.add_argument("--output", required=True, help="the report to write (REPORT.json)")
    parser.add_argument(
        "--workers", type=int, default=0, help="decoding processes (default 0: one per CPU)"
    )
    parser.add_argument(
        "--min-rms-dbfs",
        type=float,
        default=hygiene.MIN_RMS_DBFS,
        help="audio quieter than this (dBFS) is `silent` (default %(default)s)",
    )
    parser.add_argument(
        "--min-duration",
        type=float,
        default=hygiene.MIN_DURATION,
        help="videos shorter than this many seconds are `short` (default %(default)s)",
    )
    parser.add_argument(
        "--still-threshold",
        type=float,
        default=hygiene.STILL_THRESHOLD,
        help="largest mean grey-level change between sampled frames of a `still` clip "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--frames-per-clip",
        type=int,
        default=hygiene.FRAMES_PER_CLIP,
        help="frames sampled per clip (default %(default)s)",
    )
    parser.add_argument(
        "--max-frame-distance",
        type=float,
        default=hygiene.MAX_FRAME_DISTANCE,
        help="duplicates: largest mean Hamming distance of the frame hashes, bits of 64 "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--max-audio-distance",
        type=float,
        default=hygiene.MAX_AUDIO_DISTANCE,
        help="duplicates: largest share of differing audio-fingerprint bits (default %(default)s)",
    )
    parser.add_argument(
        "--keep-splits",
        nargs="+",
        default=list(hygiene.KEEP_SPLITS),
        help="of copies in several splits keep the one whose split comes first "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.csv and not args.videos:
        parser.error("--csv needs --videos")
    if args.folder and args.videos:
        parser.error("--videos goes with --csv, not --folder")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    records, problems = load_clip_records(args.csv, args.videos, args.folder)
    report = hygiene.check_clips(
        records,
        args.output,
        workers=args.workers,
        min_rms_dbfs=args.min_rms_dbfs,
        min_duration=args.min_duration,
        still_threshold=args.still_threshold,
        frames_per_clip=args.frames_per_clip,
        max_frame_distance=args.max_frame_distance,
        max_audio_distance=args.max_audio_distance,
        keep_splits=args.keep_splits,
    )
    for kind, count in sorted(Counter(failure_kind(p["reason"]) for p in problems).items()):
        print(f"CSV rows left out, {kind}: {count}")
    print(hygiene.format_summary(report))
    for kept, copy in report["split_overlap"][:10]:
        print(f"  {copy} duplicates {kept}")
    print(f"report: {args.output} (use it with prepare_clips.py --exclude {args.output})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
