"""TASK "av": stage 1 (contrastive localisation) and 1b (self-labelling), trained jointly.

total = MODEL.LOSS_MIX * L_NC + (1 - MODEL.LOSS_MIX) * L_clust. L_NC contrasts every frame with
every audio of the GLOBAL batch (embeddings are gathered across processes, with gradients), so
N processes train exactly like one process with the same global batch. Evaluation (VGG-SS
localisation, clustering) runs at the end and with --eval-only.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch
from torch import nn

from avdet.config import CfgNode
from avdet.data.av_dataset import AVClipDataset
from avdet.data.sources import DataSource, ensure_prepared, resolve_source
from avdet.engine import comm
from avdet.engine.checkpoint import Checkpointer, CheckpointError, load_weights
from avdet.engine.tasks import register_task
from avdet.engine.trainer import HookBase, Trainer
from avdet.evaluation.av_eval import evaluate_av
from avdet.models.av_model import (
    AVModel,
    background_score,
    build_av_model,
    heatmaps,
    pair_scores,
)
from avdet.models.losses import clustering_loss, infonce
from avdet.selflabel.labeller import SelfLabeller

logger = logging.getLogger(__name__)


class SelfLabelHook(HookBase):
    """Recomputes pseudo-labels at the scheduled iterations; watches for collapse.

    The labels live here (and so in every checkpoint), which makes --resume continue with them.
    """

    def __init__(self, labeller: SelfLabeller, loss: AVLoss) -> None:
        self.labeller = labeller
        self.loss = loss
        self._warned: set[str] = set()

    def before_step(self, trainer: Trainer) -> None:
        if not self.labeller.due(trainer.iter):
            return
        stuck = self.loss.last_clust_over_ln_k
        stats = self.labeller.update(trainer.model)
        model = getattr(trainer.model, "module", trainer.model)  # unwrap DDP
        model.cluster_head.fill_(self.labeller.best_head)
        trainer.log_metrics(**stats, ln_k=math.log(self.labeller.num_clusters))
        if stats["largest_cluster_share"] > 0.5 and self.labeller.num_clusters > 2:
            self._warn_once(
                "collapse",
                f"self-labelling looks collapsed at iteration {trainer.iter}: "
                f"{100 * stats['largest_cluster_share']:.0f}% of the clips in one cluster, "
                f"{stats['empty_clusters']} empty clusters (try a larger SELFLABEL.LAMBDA or a lower LR)",
            )
        if stuck is not None and stuck > 0.95:
            self._warn_once(
                "stuck",
                f"L_clust is {stuck:.2f} x ln K before the labels of iteration {trainer.iter}: the "
                "heads predict the pseudo-labels no better than chance (features without "
                "structure yet, or labels that change too often)",
            )

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            logger.warning(message)
            self._warned.add(kind)

    def state_dict(self) -> dict:
        return self.labeller.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.labeller.load_state_dict(state)


class AVLoss:
    """loss_fn of the Trainer: weighted L_NC on the global batch plus L_clust on the pseudo-labels."""

    def __init__(self, cfg: CfgNode, labeller: SelfLabeller, unwrapped: AVModel) -> None:
        self.mix = cfg.MODEL.LOSS_MIX
        self.hard_negative_fraction = cfg.MODEL.HARD_NEGATIVE_FRACTION
        if not 0.0 <= self.hard_negative_fraction <= 1.0:
            raise ValueError(
                "MODEL.HARD_NEGATIVE_FRACTION must lie in [0, 1]; "
                f"got {self.hard_negative_fraction}"
            )
        self.labeller = labeller
        self.model = unwrapped
        self.ln_k = math.log(cfg.MODEL.NUM_CLUSTERS)
        self.last_clust_over_ln_k: float | None = None  # read by SelfLabelHook

    def __call__(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor | float]:
        out = model(batch["frame"], batch["audio"])
        visual_map = comm.cat_with_grad(out.visual_map)
        audio_embedding = comm.cat_with_grad(out.audio_embedding)
        scores = pair_scores(
            visual_map, audio_embedding, self.model.pooling, self.model.topk_fraction
        )
        hard = None
        if self.hard_negative_fraction > 0:
            hard = background_score(
                heatmaps(visual_map, audio_embedding), self.hard_negative_fraction
            )
        l_nc = infonce(scores, self.model.temperature, hard)
        losses: dict[str, torch.Tensor | float] = {
            "loss_nc": self.mix * l_nc,
            "temperature": float(self.model.temperature.detach()),
        }
        if self.labeller.labels is not None and self.mix < 1:
            labels = self.labeller.batch_labels(batch["index"]).to(l_nc.device)
            l_clust = clustering_loss(out.visual_logits, out.audio_logits, labels)
            losses["loss_clust"] = (1 - self.mix) * l_clust
            self.last_clust_over_ln_k = float(l_clust.detach()) / self.ln_k if self.ln_k else 0.0
            losses["clust_over_ln_k"] = self.last_clust_over_ln_k
        else:
            # Before the first labels the heads' outputs are unused. DDP (which finds the used
            # parameters from the forward's outputs) then waits forever for their gradients;
            # a zero-weighted term gives them zero gradients instead.
            unused = sum(logits.sum() for logits in out.visual_logits + out.audio_logits)
            losses["loss_nc"] = losses["loss_nc"] + 0.0 * unused
        return losses


def load_av_model(cfg: CfgNode, weights: str | Path | None = None) -> AVModel:
    """The AV model of the config with trained weights: `weights`, MODEL.WEIGHTS, or the last checkpoint."""
    model = build_av_model(cfg)
    path = weights or cfg.MODEL.WEIGHTS or Checkpointer(cfg.OUTPUT_DIR).get_checkpoint_file()
    if not path:
        raise CheckpointError(
            f"no AV weights: set MODEL.WEIGHTS or train into {cfg.OUTPUT_DIR} first"
        )
    load_weights(model, path)
    return model.to(comm.get_device(cfg.DEVICE))


def prepare_data(cfg: CfgNode) -> DataSource:
    """Generate/prepare the data on the main process while the others wait."""
    if comm.is_main_process():
        source = ensure_prepared(cfg)
    comm.synchronize()
    return source if comm.is_main_process() else resolve_source(cfg)


@register_task("av")
def run(cfg: CfgNode, args: argparse.Namespace) -> dict:
    """Train (or with --eval-only evaluate) the AV model; returns the evaluation metrics."""
    source = prepare_data(cfg)
    if getattr(args, "eval_only", False):
        model = load_av_model(cfg)
        return evaluate_av(cfg, model, source, cfg.OUTPUT_DIR) if comm.is_main_process() else {}
    model = build_av_model(cfg)
    train_set = AVClipDataset(cfg, source.prepared_dir, cfg.DATASETS.TRAIN, train=True)
    label_set = AVClipDataset(cfg, source.prepared_dir, cfg.DATASETS.TRAIN, train=False)
    labeller = SelfLabeller(cfg, label_set, cfg.MODEL.NUM_HEADS, cfg.MODEL.NUM_CLUSTERS)
    loss = AVLoss(cfg, labeller, model)
    trainer = Trainer(
        cfg,
        model,
        train_set,
        loss,
        hooks=[SelfLabelHook(labeller, loss)],
    )
    logger.info("AV training on %d clips of %s", len(train_set), source.prepared_dir)
    stop_at = getattr(args, "stop_at", None)
    trainer.train(resume=getattr(args, "resume", False), stop_at=stop_at)
    if (stop_at is not None and stop_at < cfg.SOLVER.MAX_ITER) or not comm.is_main_process():
        return {}
    return evaluate_av(cfg, trainer.model, source, cfg.OUTPUT_DIR)
