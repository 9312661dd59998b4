"""Pseudo-labels for every training clip, recomputed on a schedule (SeLaVi stage 1b).

P = softmax(g_v) * softmax(g_a) over the whole training set, per head, goes through
Sinkhorn-Knopp with an equipartition (or Gaussian-perturbed) marginal. With several processes each
computes the rows of its own shard and the solve is exact for the whole set (column sums are
all-reduced inside `sinkhorn_knopp(distributed=True)`); every process ends up with all labels.
"""

from __future__ import annotations

import logging
import math

import torch
from torch.utils.data import DataLoader, Dataset

from avdet.config import CfgNode
from avdet.engine import comm
from avdet.selflabel.schedule import label_update_iters, make_cluster_marginal
from avdet.selflabel.sinkhorn import sinkhorn_knopp

logger = logging.getLogger(__name__)


@torch.no_grad()
def cluster_probabilities(
    model: torch.nn.Module, dataset: Dataset, indices: list[int], batch_size: int, num_workers: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """For `indices`: P = softmax(g_v) * softmax(g_a), renormalised per row, [NH, len, K]
    float32, and per head the sum over clips of P's row mass before the renormalisation, [NH]
    float64: each clip's probability that g_v and g_a, sampled, name the same cluster."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = DataLoader(
        torch.utils.data.Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers
    )
    chunks, agreement = [], 0.0
    for batch in loader:
        out = model(batch["frame"].to(device), batch["audio"].to(device))
        visual = torch.stack([torch.softmax(v.float(), 1) for v in out.visual_logits])
        audio = torch.stack([torch.softmax(a.float(), 1) for a in out.audio_logits])
        probs = visual * audio
        mass = probs.sum(-1, keepdim=True)
        chunks.append((probs / mass).cpu())
        agreement = agreement + mass.squeeze(-1).double().sum(-1).cpu()
    model.train(was_training)
    return torch.cat(chunks, dim=1), torch.as_tensor(agreement, dtype=torch.float64)


def cluster_health(labels: torch.Tensor, num_clusters: int) -> dict[str, float]:
    """Cluster-size entropy (nats and fraction of ln K), largest-cluster share, empty clusters."""
    counts = torch.bincount(labels, minlength=num_clusters).double()
    shares = counts / counts.sum()
    nonzero = shares[shares > 0]
    entropy = float(-(nonzero * nonzero.log()).sum())
    return {
        "cluster_entropy": entropy,
        "cluster_entropy_frac": entropy / math.log(num_clusters) if num_clusters > 1 else 1.0,
        "largest_cluster_share": float(shares.max()),
        "empty_clusters": int((counts == 0).sum()),
    }


class SelfLabeller:
    """Holds the [NH, N] pseudo-labels and recomputes them at the scheduled iterations."""

    def __init__(self, cfg: CfgNode, dataset: Dataset, num_heads: int, num_clusters: int) -> None:
        self.dataset = dataset
        self.num_heads = num_heads
        self.num_clusters = num_clusters
        sl = cfg.SELFLABEL
        self.lam, self.tol, self.max_iter = sl.LAMBDA, sl.TOL, sl.MAX_ITER
        self.start_iter = sl.START_ITER
        self.update_iters = set(
            label_update_iters(
                cfg.SOLVER.MAX_ITER, sl.NUM_UPDATES, sl.SCHEDULE_POWER, sl.START_ITER
            )
        )
        generator = torch.Generator().manual_seed(cfg.SEED)
        self.marginal = make_cluster_marginal(num_clusters, sl.MARGINAL, sl.MARGINAL_STD, generator)
        self.batch_size = max(1, cfg.TEST.IMS_PER_BATCH // comm.get_world_size())
        self.num_workers = cfg.DATALOADER.NUM_WORKERS
        self.labels: torch.Tensor | None = None  # [NH, N] int64, None until the first update
        # The head whose visual and audio predictions agree most (mean over clips of
        # sum_k softmax(g_v)_k * softmax(g_a)_k): the clustering that both modalities
        # corroborate, used for pseudo-box classes and cluster ids downstream.
        self.best_head = 0

    def due(self, iteration: int) -> bool:
        return iteration in self.update_iters or (
            self.labels is None and iteration > min(self.update_iters)
        )

    def update(self, model: torch.nn.Module) -> dict[str, float]:
        """Recompute every clip's labels with the current model; returns health statistics."""
        n = len(self.dataset)
        rank, world = comm.get_rank(), comm.get_world_size()
        shard = list(range(rank, n, world))
        probs, agreement = cluster_probabilities(
            model, self.dataset, shard, self.batch_size, self.num_workers
        )
        labels = torch.empty(self.num_heads, n, dtype=torch.int64)
        for head in range(self.num_heads):
            local = sinkhorn_knopp(
                probs[head],
                distributed=world > 1,
                lam=self.lam,
                cluster_marginal=self.marginal,
                tol=self.tol,
                max_iter=self.max_iter,
            )
            labels[head] = _unshard(local, n)
        self.labels = labels
        agreement = comm.all_reduce(agreement) / n
        self.best_head = int(agreement.argmax())
        stats = cluster_health(labels[self.best_head], self.num_clusters)
        stats.update(best_head=self.best_head, modality_agreement=float(agreement.max()))
        logger.info("pseudo-labels recomputed: %s", stats)
        return stats

    def batch_labels(self, indices: torch.Tensor) -> torch.Tensor:
        """Labels of a batch's dataset indices: [NH, B]."""
        assert self.labels is not None, "labels are computed before the first clustering loss"
        return self.labels[:, indices.cpu()]

    def state_dict(self) -> dict:
        return {"labels": self.labels, "best_head": self.best_head}

    def load_state_dict(self, state: dict) -> None:
        self.labels = state["labels"]
        self.best_head = state.get("best_head", 0)


def _unshard(local: torch.Tensor, n: int) -> torch.Tensor:
    """Labels of rows rank::world from every process -> all N labels in dataset order."""
    world = comm.get_world_size()
    if world == 1:
        return local
    gathered = comm.all_gather(local)
    full = torch.empty(n, dtype=torch.int64)
    for rank, part in enumerate(gathered):
        full[rank::world] = part
    return full
