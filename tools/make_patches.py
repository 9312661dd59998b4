#!/usr/bin/env python
"""Write a patch set from one image: patch files, index.json and a contact sheet.

    python tools/make_patches.py --image IMG --output DIR --num-patches N --size R [--seed S]

IMG is an image path or `package:path` (a file shipped in an installed package, e.g.
`skimage:data/astronaut.png`). The same patches are made on the fly by training runs with the
same seed, so writing them is optional; a written folder can also be DISTILL.SOURCE_IMAGE.
"""

from __future__ import annotations

import argparse
import logging
import sys

from avdet.distill.patches import PATCH_FORMATS, SourceImageError, write_patch_set


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--image", required=True, help="source image path or package:path")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--num-patches", type=int, required=True, help="how many patches")
    parser.add_argument("--size", type=int, required=True, help="patch side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="patch i depends on (seed, i)")
    parser.add_argument("--format", choices=PATCH_FORMATS, default="png", help="patch files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        index = write_patch_set(
            args.image, args.output, args.num_patches, args.size, args.seed, args.format
        )
    except (SourceImageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.num_patches} patches of {args.size} px; index: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
