#!/usr/bin/env python
"""Check a checkpoint: size and sha256 against its .sha256 sidecar, and a weights_only load.

    python tools/verify_checkpoint.py output/model_final.pth [more.pth ...]

Exit status 0 when every file matches its sidecar and loads, 1 otherwise (a file without a
sidecar cannot be verified and fails); one line per file says why.
"""

from __future__ import annotations

import argparse
import sys

from avdet.engine.checkpoint import CheckpointError, load_checkpoint, verify_checkpoint


def check(path: str) -> bool:
    """Print one line for `path`; True when it verifies and loads."""
    try:
        record = verify_checkpoint(path)
        state = load_checkpoint(path, verify=False)
    except CheckpointError as exc:
        print(f"FAIL {exc}")
        return False
    if record is None:
        print(f"FAIL {path}: no .sha256 sidecar to verify against (it does load with weights_only)")
        return False
    keys = ", ".join(sorted(state)[:8])
    print(f"OK   {path}: {record['size']} bytes, sha256 {record['sha256']}; entries: {keys}")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("paths", nargs="+", metavar="PATH", help="checkpoint file(s)")
    args = parser.parse_args(argv)
    results = [check(path) for path in args.paths]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
