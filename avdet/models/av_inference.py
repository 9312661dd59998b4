"""Run a trained AV model over a clip dataset: heatmaps, pair scores and cluster ids per clip.

Stage-1 evaluation, pseudo-boxes (stage 2) and clustering-only mode all consume this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from avdet.config import CfgNode
from avdet.models.av_model import AVModel, heatmaps, pool_heatmap
from avdet.models.heatmap_aug import augmented_heatmaps, smooth_heatmaps


@dataclass
class AVPredictions:
    """Per clip, in dataset order: N clips, heatmaps of the visual map's size h x w."""

    heatmaps: np.ndarray  # [N, h, w] float32 cosine similarities (the views' mean when augmented)
    scores: np.ndarray  # [N] pair score (pooled heatmap)
    clusters: np.ndarray  # [N] int64, argmax of softmax(g_v) + softmax(g_a) of one head
    confidence: np.ndarray  # [N] mean of the two modalities' probabilities of that cluster
    clip_ids: list[str]


@torch.no_grad()
def predict_av(
    model: AVModel,
    dataset: Dataset,
    batch_size: int = 64,
    num_workers: int = 0,
    head: int | None = None,
    progress: bool = True,
    aug_scales: Sequence[float] = (),
    aug_flip: bool = False,
    smooth_sigma: float = 0.0,
) -> AVPredictions:
    """Evaluate `model` (in eval mode) on every item of `dataset` (an AVClipDataset).

    Cluster ids come from `head`, by default the model's `cluster_head` (chosen in training).
    With `aug_scales`, each heatmap is the mean over the frame at those scales and, with
    `aug_flip`, their mirror images (`avdet.models.heatmap_aug`); cluster ids and the audio
    embedding come from the frame as it is. `smooth_sigma` > 0 then smooths each heatmap with a
    Gaussian of that many cells; pair scores are pooled from the final heatmaps.
    """
    device = next(model.parameters()).device
    head = int(model.cluster_head) if head is None else head
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    maps, scores, clusters, confidence, clip_ids = [], [], [], [], []
    for batch in tqdm(loader, desc="AV inference", disable=not progress, leave=False):
        frames = batch["frame"].to(device)
        out = model(frames, batch["audio"].to(device))
        h = heatmaps(out.visual_map, out.audio_embedding).float()
        if aug_scales:
            h = augmented_heatmaps(model, frames, out.audio_embedding, h, aug_scales, aug_flip)
        if smooth_sigma > 0:
            h = smooth_heatmaps(h, smooth_sigma)
        maps.append(h.cpu())
        scores.append(pool_heatmap(h, model.pooling, model.topk_fraction).cpu())
        probs = 0.5 * (
            torch.softmax(out.visual_logits[head].float(), 1)
            + torch.softmax(out.audio_logits[head].float(), 1)
        )
        conf, ids = probs.max(1)
        clusters.append(ids.cpu())
        confidence.append(conf.cpu())
        clip_ids.extend(batch["clip_id"])
    model.train(was_training)
    return AVPredictions(
        heatmaps=torch.cat(maps).numpy(),
        scores=torch.cat(scores).numpy(),
        clusters=torch.cat(clusters).numpy().astype(np.int64),
        confidence=torch.cat(confidence).numpy(),
        clip_ids=clip_ids,
    )


def heatmap_test_args(cfg: CfgNode) -> dict:
    """predict_av's heatmap arguments from TEST.HEATMAP_AUG and TEST.HEATMAP_SMOOTH (only those
    that are on)."""
    args: dict = {}
    aug = cfg.TEST.HEATMAP_AUG
    if aug.ENABLED:
        scales = tuple(float(s) for s in aug.SCALES)
        if not scales or min(scales) <= 0:
            raise ValueError(
                "TEST.HEATMAP_AUG.SCALES must be one or more positive scales; "
                f"got {list(aug.SCALES)}"
            )
        args.update(aug_scales=scales, aug_flip=bool(aug.FLIP))
    sigma = float(cfg.TEST.HEATMAP_SMOOTH)
    if sigma < 0:
        raise ValueError(f"TEST.HEATMAP_SMOOTH must be >= 0 (cells; 0 = off); got {sigma}")
    if sigma > 0:
        args["smooth_sigma"] = sigma
    return args
