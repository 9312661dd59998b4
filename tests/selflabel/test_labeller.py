"""SelfLabeller: labels for every clip and head, and the choice of the head the modalities agree on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from avdet.config import load_config
from avdet.selflabel.labeller import SelfLabeller

K = 4


class OneHotClips(Dataset):
    """Clip i of class i % K: its frame and its audio are both the logits 5 * one_hot(class)."""

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> dict:
        logits = 5.0 * nn.functional.one_hot(torch.tensor(index % K), K).float()
        return {"index": index, "frame": logits, "audio": logits}


class TwoHeads(nn.Module):
    """Head 0: the audio logits are the visual ones rotated (the modalities never agree);
    head 1: both read the clip's class (they always agree)."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, frame: torch.Tensor, audio: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(
            visual_logits=[frame, frame], audio_logits=[audio.roll(1, dims=1), audio]
        )


def test_update_labels_every_clip_per_head_and_picks_the_agreeing_head():
    cfg = load_config(
        None,
        ["MODEL.NUM_CLUSTERS", str(K), "MODEL.NUM_HEADS", "2", "DATALOADER.NUM_WORKERS", "0",
         "SOLVER.MAX_ITER", "10", "TEST.IMS_PER_BATCH", "5"],
    )  # fmt: skip
    dataset = OneHotClips()
    labeller = SelfLabeller(cfg, dataset, num_heads=2, num_clusters=K)
    stats = labeller.update(TwoHeads())
    assert labeller.labels.shape == (2, len(dataset))
    assert labeller.best_head == 1 and stats["best_head"] == 1
    # the chance that g_v and g_a, sampled, name the same cluster: sum_k p_k ** 2 for head 1
    p = torch.softmax(5.0 * torch.eye(K)[0], 0)
    assert stats["modality_agreement"] == pytest.approx(float((p * p).sum()), rel=1e-6)
    classes = torch.arange(len(dataset)) % K
    # the agreeing head's labels are the classes up to a renaming, balanced by Sinkhorn-Knopp
    for k in range(K):
        assert labeller.labels[1][classes == k].unique().numel() == 1
    assert stats["empty_clusters"] == 0 and stats["largest_cluster_share"] == 1 / K
    restored = SelfLabeller(cfg, dataset, num_heads=2, num_clusters=K)
    restored.load_state_dict(labeller.state_dict())
    assert restored.best_head == 1 and torch.equal(restored.labels, labeller.labels)
