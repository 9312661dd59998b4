"""The stage-1 loss step of test_av_ddp, importable by the processes that `launch` spawns."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from avdet.config import CfgNode, load_config
from avdet.engine import comm
from avdet.models.av_model import AVModel
from avdet.models.av_task import AVLoss

GLOBAL_BATCH = 8


class FixedLabels:
    """The part of SelfLabeller that AVLoss reads: [NH, N] labels and a batch lookup."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def batch_labels(self, indices: torch.Tensor) -> torch.Tensor:
        return self.labels[:, indices]


def av_setup() -> tuple[CfgNode, AVModel, dict[str, torch.Tensor], FixedLabels]:
    """The same small model, global batch and labels in every process.

    BatchNorm runs on its running statistics (eval mode): in train mode each process normalises
    its own half of the batch, which no global-batch loss can make equal to one process.
    """
    torch.manual_seed(0)
    cfg = load_config(
        None,
        ["MODEL.NUM_CLUSTERS", "3", "MODEL.LOSS_MIX", "0.5", "MODEL.HARD_NEGATIVE_FRACTION", "0.5"],
    )
    model = AVModel(
        visual_last_stage="layer1",
        audio_last_stage="layer1",
        embed_dim=16,
        pooling="max",
        num_clusters=3,
        head_hidden_dim=16,
    ).eval()
    gen = torch.Generator().manual_seed(1)
    batch = {
        "frame": torch.randn(GLOBAL_BATCH, 3, 32, 40, generator=gen),
        "audio": torch.randn(GLOBAL_BATCH, 1, 16, 24, generator=gen),  # spectrograms
        "index": torch.arange(GLOBAL_BATCH),
    }
    return cfg, model, batch, FixedLabels(torch.randint(0, 3, (1, GLOBAL_BATCH), generator=gen))


def loss_step(model: torch.nn.Module, unwrapped: AVModel, cfg, batch, labels) -> dict:
    """One AVLoss forward and backward; the loss values and the gradients it leaves."""
    losses = AVLoss(cfg, labels, unwrapped)(model, batch)
    (losses["loss_nc"] + losses["loss_clust"]).backward()
    return {
        "losses": {k: float(torch.as_tensor(v).detach()) for k, v in losses.items()},
        "grads": {n: p.grad.clone() for n, p in unwrapped.named_parameters()},
    }


def av_loss_worker(output_dir: str) -> None:
    """Each process takes its share of the global batch; DDP averages the gradients."""
    rank, world = comm.get_rank(), comm.get_world_size()
    cfg, model, batch, labels = av_setup()
    share = GLOBAL_BATCH // world
    local = {k: v[rank * share : (rank + 1) * share] for k, v in batch.items()}
    result = loss_step(DistributedDataParallel(model), model, cfg, local, labels)
    torch.save(result, Path(output_dir) / f"rank{rank}.pt")
