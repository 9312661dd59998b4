"""Optimiser and learning-rate schedule from cfg.SOLVER (stepped once per iteration)."""

from __future__ import annotations

import bisect
import functools
import math

import torch
from torch import nn

from avdet.config import CfgNode

OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULERS = ("cosine", "steps")


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the trainable parameters, from cfg.SOLVER.

    Parameters with at most one dimension (biases, norm-layer scales and shifts, scalars such as
    a learnable temperature) get no weight decay, as in torchvision's references.
    """
    solver = cfg.SOLVER
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [
        {"params": params, "weight_decay": wd}
        for params, wd in ((decay, solver.WEIGHT_DECAY), (no_decay, 0.0))
        if params
    ]
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimise")
    name = solver.OPTIMIZER.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=solver.BASE_LR, momentum=solver.MOMENTUM)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=solver.BASE_LR)
    raise ValueError(f"SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, got {solver.OPTIMIZER!r}")


def lr_factor(
    iteration: int,
    *,
    max_iter: int,
    scheduler: str = "cosine",
    steps: tuple[int, ...] = (),
    gamma: float = 0.1,
    warmup_iters: int = 0,
    warmup_factor: float = 1.0,
) -> float:
    """Multiplier of BASE_LR at `iteration` (0-based): schedule value times linear warm-up.

    cosine: 0.5 * (1 + cos(pi * it / max_iter)), from 1 at 0 to 0 at max_iter.
    steps: gamma ** (number of STEPS <= it).
    Warm-up (detectron2's "linear"): from warmup_factor at 0 up to 1 at warmup_iters.
    """
    if scheduler == "cosine":
        value = 0.5 * (1.0 + math.cos(math.pi * min(iteration, max_iter) / max_iter))
    elif scheduler == "steps":
        value = gamma ** bisect.bisect_right(steps, iteration)
    else:
        raise ValueError(f"SOLVER.LR_SCHEDULER must be one of {LR_SCHEDULERS}, got {scheduler!r}")
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        value *= warmup_factor * (1.0 - alpha) + alpha
    return value


def build_lr_scheduler(
    cfg: CfgNode, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over `lr_factor` with cfg.SOLVER's settings; call `.step()` once per iteration."""
    solver = cfg.SOLVER
    if solver.MAX_ITER <= 0:
        raise ValueError(f"SOLVER.MAX_ITER must be positive, got {solver.MAX_ITER}")
    steps = tuple(solver.STEPS)
    if list(steps) != sorted(steps) or any(s <= 0 or s >= solver.MAX_ITER for s in steps):
        raise ValueError(
            f"SOLVER.STEPS must be increasing iterations in (0, MAX_ITER={solver.MAX_ITER}), "
            f"got {steps}"
        )
    factor = functools.partial(
        lr_factor,
        max_iter=solver.MAX_ITER,
        scheduler=solver.LR_SCHEDULER,
        steps=steps,
        gamma=solver.GAMMA,
        warmup_iters=solver.WARMUP_ITERS,
        warmup_factor=solver.WARMUP_FACTOR,
    )
    factor(0)  # fail here, not at the first step, on an unknown scheduler name
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
