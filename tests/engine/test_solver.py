"""Optimiser parameter groups and the warm-up + cosine / steps learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from avdet.config import get_cfg
from avdet.engine.solver import build_lr_scheduler, build_optimizer, lr_factor


def _cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.merge_from_other(solver)
    return cfg


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.temperature = nn.Parameter(torch.tensor(0.07))
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_weight_decay_only_on_weights_of_rank_two_or_more():
    opt = build_optimizer(_cfg(WEIGHT_DECAY=0.1, OPTIMIZER="sgd", MOMENTUM=0.8), _Net())
    assert isinstance(opt, torch.optim.SGD)
    decay, no_decay = opt.param_groups
    net = _Net()
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [net.conv.weight.shape, net.fc.weight.shape]
    # conv/fc biases, BN weight and bias, the scalar temperature; the frozen layer is left out
    assert sorted(p.numel() for p in no_decay["params"]) == [1, 2, 4, 4, 4]
    assert decay["momentum"] == 0.8


def test_adamw_and_unknown_optimizer():
    assert isinstance(build_optimizer(_cfg(OPTIMIZER="adamw"), _Net()), torch.optim.AdamW)
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER must be one of"):
        build_optimizer(_cfg(OPTIMIZER="lamb"), _Net())


def test_cosine_with_linear_warmup_values():
    kw = dict(max_iter=100, scheduler="cosine", warmup_iters=10, warmup_factor=0.001)
    assert lr_factor(0, **kw) == pytest.approx(0.001)
    # halfway through warm-up: (0.001 + 1) / 2, times cosine at 5/100
    assert lr_factor(5, **kw) == pytest.approx(0.5005 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert lr_factor(10, **kw) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert lr_factor(50, **kw) == pytest.approx(0.5)
    assert lr_factor(100, **kw) == pytest.approx(0.0, abs=1e-12)


def test_steps_schedule_values():
    kw = dict(max_iter=100, scheduler="steps", steps=(30, 60), gamma=0.1)
    assert [lr_factor(i, **kw) for i in (0, 29, 30, 59, 60, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )


def test_scheduler_steps_the_optimizer_lr_per_iteration():
    cfg = _cfg(BASE_LR=0.2, MAX_ITER=20, WARMUP_ITERS=4, WARMUP_FACTOR=0.5)
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    sched = build_lr_scheduler(cfg, opt)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    expected = [
        0.2 * lr_factor(i, max_iter=20, warmup_iters=4, warmup_factor=0.5) for i in range(20)
    ]
    assert seen == pytest.approx(expected)
    # both groups (weight with decay, bias without) follow it, down to 0 at MAX_ITER
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0, 0.0], abs=1e-12)


@pytest.mark.parametrize(
    ("solver", "message"),
    [
        ({"LR_SCHEDULER": "poly"}, "SOLVER.LR_SCHEDULER must be one of"),
        ({"LR_SCHEDULER": "steps", "STEPS": (50, 20)}, "SOLVER.STEPS must be increasing"),
        ({"LR_SCHEDULER": "steps", "STEPS": (2000,)}, "SOLVER.STEPS must be increasing"),
        ({"MAX_ITER": 0}, "SOLVER.MAX_ITER must be positive"),
    ],
)
def test_invalid_schedule_settings(solver, message):
    cfg = _cfg(**solver)
    with pytest.raises(ValueError, match=message):
        build_lr_scheduler(cfg, build_optimizer(cfg, nn.Linear(2, 2)))
