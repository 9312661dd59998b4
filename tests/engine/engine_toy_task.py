"""A tiny regression "stage" for the engine tests: synthetic data, an MLP, an MSE loss, a task.

The CLI tests run it as `TASK engine_toy_task:run` with tests/engine on PYTHONPATH (the
"package.module:function" form of cfg.TASK). It is small enough to train in well under a second.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from avdet.config import CfgNode, get_cfg
from avdet.engine import comm
from avdet.engine.checkpoint import load_weights
from avdet.engine.defaults import default_setup
from avdet.engine.trainer import HookBase, NonFiniteLossError, Trainer

DIM = 4


class ToyRegression(Dataset):
    """y = <w, x> + 0.5 on fixed inputs; each read adds fresh noise from the global torch RNG.

    The noise stands in for random augmentation: it is what makes data loading RNG-dependent.
    """

    def __init__(self, size: int = 20, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, DIM, generator=generator)
        self.y = self.x @ torch.linspace(-1.0, 1.0, DIM) + 0.5

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        noise = 0.05 * torch.randn(DIM)
        return {"x": self.x[index] + noise, "y": self.y[index], "index": index}


class ToyModel(nn.Module):
    """[B, DIM] -> [B]; dropout > 0 makes the training step itself draw from the torch RNG."""

    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(DIM, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def mse_loss(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    pred = model(batch["x"])
    return {"loss_mse": F.mse_loss(pred, batch["y"]), "pred_mean": pred.mean().detach()}


class DrawHook(HookBase):
    """Draws a random number after every step and keeps them all: hook state that the
    checkpoint must carry, and RNG use outside the model that resume must reproduce."""

    def __init__(self) -> None:
        self.draws: list[float] = []

    def after_step(self, trainer: Trainer) -> None:
        self.draws.append(float(torch.rand(())))

    def state_dict(self) -> dict:
        return {"draws": list(self.draws)}

    def load_state_dict(self, state: dict) -> None:
        self.draws = list(state["draws"])


def toy_cfg(output_dir: str, **solver: object) -> CfgNode:
    """CPU config for the toy task; `solver` overrides SOLVER keys."""
    cfg = get_cfg()
    cfg.TASK = "engine_toy_task:run"
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.DEVICE = "cpu"
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.merge_from_other(
        {
            "BASE_LR": 0.05,
            "IMS_PER_BATCH": 8,
            "MAX_ITER": 12,
            "WARMUP_ITERS": 3,
            "WARMUP_FACTOR": 0.1,
            "CHECKPOINT_PERIOD": 5,
            "LOG_PERIOD": 2,
            "CLIP_GRAD_NORM": 1.0,
            "AMP": False,
            **solver,
        }
    )
    return cfg


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ToyRegression) -> float:
    model.eval()
    return float(F.mse_loss(model(dataset.x), dataset.y))


def run(cfg: CfgNode, args: argparse.Namespace) -> dict:
    """The task entry point (`run(cfg, args) -> dict`), as a real stage would write it."""
    dataset = ToyRegression()
    model = ToyModel(dropout=0.1)
    if args.eval_only:
        load_weights(model, cfg.MODEL.WEIGHTS)
    else:
        Trainer(cfg, model, dataset, mse_loss, hooks=[DrawHook()]).train(resume=args.resume)
    return {"mse": evaluate(model, dataset)}


def _loss_nan_on_rank_1(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    losses = mse_loss(model, batch)
    if comm.get_rank() == 1:
        losses["loss_mse"] = losses["loss_mse"] * float("nan")
    return losses


def ddp_main(output_dir: str, max_iter: int) -> None:
    """Run by `launch` in every process of the DDP test; writes what the test checks.

    - `comm_rank<r>.json`: results of the collective helpers, and the error each process got
      when only process 1 saw a NaN loss;
    - `full/`: an uninterrupted run; `resumed/`: the same run stopped halfway and resumed.
    """
    out = Path(output_dir)
    rank = comm.get_rank()
    gathered = comm.all_gather(torch.full((rank + 1, 2), float(rank)))
    report = {
        "world_size": comm.get_world_size(),
        "gathered_shapes": [list(t.shape) for t in gathered],
        "gathered_values": [float(t.sum()) for t in gathered],
        "mean": float(comm.all_reduce(torch.tensor([rank * 2.0]), "mean")),
        "max": float(comm.all_reduce(torch.tensor([rank * 2.0]), "max")),
        "broadcast": comm.broadcast_object({"from": rank}),
        "reduced": comm.reduce_mean_dict({"a": float(rank), **({"b": 5.0} if rank else {})}),
    }

    def train(name: str, **kwargs: object) -> None:
        cfg = toy_cfg(out / name, MAX_ITER=max_iter, LOG_PERIOD=1, CHECKPOINT_PERIOD=100)
        default_setup(cfg)  # seeds with SEED + rank, like tools/train_net.py
        Trainer(cfg, ToyModel(), ToyRegression(), mse_loss).train(**kwargs)

    train("full")
    train("resumed", stop_at=max_iter // 2)
    train("resumed", resume=True)

    cfg = toy_cfg(out / "nan")
    try:
        Trainer(cfg, ToyModel(), ToyRegression(), _loss_nan_on_rank_1).train()
    except NonFiniteLossError as exc:
        report["nan_error"] = str(exc)
    (out / f"comm_rank{rank}.json").write_text(json.dumps(report))
