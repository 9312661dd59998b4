"""The command line every avdet tool shares, and the per-process setup of a run (detectron2 style)."""

from __future__ import annotations

import argparse
import logging
import platform
import sys

import torch

from avdet.config import CfgNode, save_config
from avdet.engine import comm
from avdet.engine.logger import setup_logger
from avdet.engine.tasks import BUILTIN_TASKS
from avdet.utils.seed import seed_all

logger = logging.getLogger(__name__)


def default_argument_parser(description: str | None = None) -> argparse.ArgumentParser:
    """--config-file, --resume, --eval-only, --num-gpus, --dist-url and trailing KEY VALUE pairs."""
    tasks = "\n".join(f"  {name:<10} ({module})" for name, module in BUILTIN_TASKS.items())
    epilog = f"""\
config overrides:
  Trailing KEY VALUE pairs override the config file, e.g.
    SOLVER.BASE_LR 0.05 SOLVER.MAX_ITER 2000 OUTPUT_DIR output/run1
  Values are parsed as Python literals ("(1, 2)", "True", "1e-3"); unknown keys are an error
  naming the closest valid key. Every key and its default: avdet/config/defaults.py.

tasks (config key TASK):
{tasks}
  or "package.module:function" for any importable run(cfg, args) -> dict.

multi-process:
  --num-gpus N starts N processes on this machine (one GPU each with NCCL; without CUDA,
  N CPU processes with gloo). Or: torchrun --nproc-per-node N tools/train_net.py ...
  SOLVER.IMS_PER_BATCH is the global batch, split between the processes.

outputs (OUTPUT_DIR): config.yaml, log.txt, metrics.json (JSON lines), model_*.pth with
  .sha256 sidecars, last_checkpoint, model_final.pth, inference/.
"""
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="YAML config file")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUTPUT_DIR/last_checkpoint (model, optimiser, schedule, data "
        "position, RNG); without a checkpoint, start from scratch",
    )
    parser.add_argument(
        "--eval-only", action="store_true", help="evaluate MODEL.WEIGHTS (or the last checkpoint)"
    )
    parser.add_argument(
        "--num-gpus", type=int, default=1, help="processes to start on this machine (default 1)"
    )
    parser.add_argument(
        "--dist-url",
        default="auto",
        help="rendezvous of the spawned processes: 'auto' (a free local port) or tcp://HOST:PORT",
    )
    parser.add_argument(
        "opts",
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides, see below",
    )
    return parser


def default_setup(cfg: CfgNode, args: argparse.Namespace | None = None) -> None:
    """Per-process setup: output dir, logger, environment info, seed, config.yaml (rank 0).

    Seeds Python, NumPy and torch with cfg.SEED + rank, so process 0 of a multi-process run draws
    what a single process draws.
    """
    rank = comm.get_rank()
    setup_logger(cfg.OUTPUT_DIR, rank)
    logger.info(
        "rank %d of %d; Python %s; torch %s; CUDA %s; platform %s",
        rank,
        comm.get_world_size(),
        platform.python_version(),
        torch.__version__,
        torch.version.cuda if torch.cuda.is_available() else "not available",
        platform.platform(),
    )
    logger.info("command line: %s", " ".join(sys.argv))
    if args is not None:
        logger.info("arguments: %s", vars(args))
    logger.debug("full config:\n%s", cfg.dump())
    if comm.is_main_process():
        path = save_config(cfg)
        logger.info("config saved to %s", path)
    seed_all(cfg.SEED + rank)
