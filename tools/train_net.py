#!/usr/bin/env python
"""Train or evaluate one avdet stage, chosen by the config's TASK.

    python tools/train_net.py --config-file configs/toy/av.yaml [--resume] [--eval-only]
        [--num-gpus N] [KEY VALUE ...]

See `--help` for overrides, tasks and multi-process runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from avdet.config import ConfigError, load_config
from avdet.engine import comm
from avdet.engine.defaults import default_argument_parser, default_setup
from avdet.engine.launch import launch
from avdet.engine.tasks import TaskError, get_task


def main(args: argparse.Namespace) -> dict | None:
    """One process's run: config, setup, then the task's `run(cfg, args)`."""
    cfg = load_config(args.config_file, args.opts)
    default_setup(cfg, args)
    results = get_task(cfg.TASK)(cfg, args)
    if comm.is_main_process() and results:
        print(json.dumps(results, indent=2, default=str))
    return results


def cli(argv: list[str] | None = None) -> None:
    parser = default_argument_parser(__doc__.splitlines()[1])
    args = parser.parse_args(argv)
    try:  # fail here, once, rather than in every spawned process
        cfg = load_config(args.config_file, args.opts)
        get_task(cfg.TASK)
    except (ConfigError, TaskError) as exc:
        parser.error(str(exc))
    backend = "gloo" if cfg.DEVICE == "cpu" else "auto"
    launch(main, args.num_gpus, args=(args,), dist_url=args.dist_url, backend=backend)


if __name__ == "__main__":
    cli(sys.argv[1:])
