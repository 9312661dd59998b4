"""Stage-1 losses: symmetric InfoNCE over pair scores, and the self-labelling cross-entropy."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce(
    scores: torch.Tensor,
    temperature: torch.Tensor | float,
    hard_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_NC from pair scores S [B, B] (S[i, j]: frame i with audio j; positives on the diagonal).

    The mean of the frame->audio and audio->frame cross-entropies over logits S / temperature.
    `hard_negatives` [B]: one more negative score per pair, in both directions (e.g. the pair's
    own heatmap away from the sounding region).
    """
    if scores.ndim != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores must be square [B, B]; got {tuple(scores.shape)}")
    logits = scores / temperature
    target = torch.arange(scores.shape[0], device=scores.device)
    rows, cols = logits, logits.t()
    if hard_negatives is not None:
        extra = (hard_negatives / temperature).unsqueeze(1)
        rows, cols = torch.cat([rows, extra], 1), torch.cat([cols, extra], 1)
    return 0.5 * (F.cross_entropy(rows, target) + F.cross_entropy(cols, target))


def clustering_loss(
    visual_logits: list[torch.Tensor], audio_logits: list[torch.Tensor], labels: torch.Tensor
) -> torch.Tensor:
    """L_clust = mean over heads of (CE(g_v, y) + CE(g_a, y)) / 2; labels [NH, B] int64."""
    per_head = [
        0.5 * (F.cross_entropy(v, y) + F.cross_entropy(a, y))
        for v, a, y in zip(visual_logits, audio_logits, labels, strict=True)
    ]
    return torch.stack(per_head).mean()
