"""The two-tower audio-visual model: heatmaps, pair scores and clustering heads (stages 1 and 1b).

H(v, a) is the cosine similarity between the audio embedding and every spatial visual embedding;
the pair score S(v, a) pools H over space (max: multiple-instance). The clustering heads g_v, g_a
give K logits per head from the pooled trunk features of each modality.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from avdet.config import CfgNode
from avdet.data.audio import build_spectrogram
from avdet.models.towers import AudioTower, VisualTower
from avdet.models.weights import load_resnet_weights

POOLINGS = ("max", "mean", "lse", "topk")
VISUAL_HEAD_POOLINGS = ("mean", "max", "heatmap")


@dataclass
class AVOutput:
    """What one forward pass gives; shapes for a batch of B clips, K clusters, NH heads."""

    visual_map: torch.Tensor  # [B, D, h, w], L2-normalised over D
    audio_embedding: torch.Tensor  # [B, D], L2-normalised
    visual_logits: list[torch.Tensor]  # NH x [B, K]
    audio_logits: list[torch.Tensor]  # NH x [B, K]


def heatmaps(visual_map: torch.Tensor, audio_embedding: torch.Tensor) -> torch.Tensor:
    """Cosine heatmaps of each clip's own pair: [B, D, h, w] x [B, D] -> [B, h, w]."""
    return torch.einsum("bdhw,bd->bhw", visual_map, audio_embedding)


def _topk_count(fraction: float, locations: int) -> int:
    """How many locations "topk" pooling averages: ceil(fraction * locations), at least one."""
    return max(1, math.ceil(fraction * locations))


def pool_heatmap(heatmap: torch.Tensor, pooling: str, topk_fraction: float = 0.1) -> torch.Tensor:
    """Pair score from heatmaps [..., h, w] -> [...].

    "lse" is a smooth max (temperature 0.1); "topk" the mean of the largest `topk_fraction` of the
    locations: multiple-instance like max, but the gradient reaches a whole object, not one cell.
    """
    flat = heatmap.flatten(-2)
    if pooling == "topk":
        return flat.topk(_topk_count(topk_fraction, flat.shape[-1]), dim=-1).values.mean(-1)
    if pooling == "max":
        return flat.amax(-1)
    if pooling == "mean":
        return flat.mean(-1)
    if pooling == "lse":
        return 0.1 * (torch.logsumexp(flat / 0.1, dim=-1) - math.log(flat.shape[-1]))
    raise ValueError(f"unknown pooling {pooling!r}; valid: {POOLINGS}")


def background_score(heatmap: torch.Tensor, fraction: float) -> torch.Tensor:
    """The mean of the lowest `fraction` of the locations of heatmaps [..., h, w] -> [...]: how well
    the frame's least matching region matches the audio (LVS's hard negative, Chen et al. 2021)."""
    flat = heatmap.flatten(-2)
    return -(-flat).topk(_topk_count(fraction, flat.shape[-1]), dim=-1).values.mean(-1)


def pooling_weights(
    heatmap: torch.Tensor, pooling: str, topk_fraction: float = 0.1
) -> torch.Tensor:
    """Where a pooling looks: weights over the locations of heatmaps [B, h, w] -> [B, h, w], each
    map summing to 1 (the argmax for "max", the top fraction for "topk", softmax for "lse")."""
    flat = heatmap.flatten(1)
    if pooling == "mean":
        weights = torch.full_like(flat, 1.0 / flat.shape[1])
    elif pooling == "lse":
        weights = torch.softmax(flat / 0.1, dim=1)
    else:
        k = 1 if pooling == "max" else _topk_count(topk_fraction, flat.shape[1])
        weights = torch.zeros_like(flat).scatter_(1, flat.topk(k, dim=1).indices, 1.0 / k)
    return weights.view_as(heatmap)


def pair_scores(
    visual_map: torch.Tensor,
    audio_embedding: torch.Tensor,
    pooling: str,
    topk_fraction: float = 0.1,
) -> torch.Tensor:
    """S[i, j] = pool(H(v_i, a_j)) for every frame i and audio j of the batch: [B, B]."""
    all_pairs = torch.einsum("bdhw,nd->bnhw", visual_map, audio_embedding)
    return pool_heatmap(all_pairs, pooling, topk_fraction)


class ClusterHead(nn.Module):
    """MLP from a pooled trunk feature [B, C] to K cluster logits [B, K]."""

    def __init__(self, in_dim: int, hidden_dim: int, num_clusters: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, num_clusters),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class AVModel(nn.Module):
    """Two towers, projections to a shared space, a temperature, and NH clustering heads per modality."""

    def __init__(
        self,
        visual_arch: str = "resnet18",
        visual_last_stage: str = "layer3",
        audio_arch: str = "resnet18",
        audio_last_stage: str = "layer4",
        embed_dim: int = 128,
        pooling: str = "max",
        topk_fraction: float = 0.1,
        temperature: float = 0.07,
        learn_temperature: bool = False,
        num_clusters: int = 8,
        num_heads: int = 1,
        head_hidden_dim: int = 512,
        visual_head_pooling: str = "mean",
        spectrogram: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.spectrogram = spectrogram
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; valid: {POOLINGS}")
        self.visual = VisualTower(visual_arch, visual_last_stage, embed_dim)
        self.audio = AudioTower(audio_arch, audio_last_stage, embed_dim)
        self.pooling = pooling
        self.topk_fraction = topk_fraction
        log_t = torch.tensor(math.log(temperature))
        if learn_temperature:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        self.num_clusters = num_clusters
        # Which head gives the clusters downstream (pseudo-box classes, cluster ids); the
        # self-labelling hook sets it, and it travels in every checkpoint.
        self.register_buffer("cluster_head", torch.zeros((), dtype=torch.int64))
        if visual_head_pooling not in VISUAL_HEAD_POOLINGS:
            raise ValueError(
                f"visual head pooling must be one of {VISUAL_HEAD_POOLINGS}; "
                f"got {visual_head_pooling!r}"
            )
        self.visual_head_pooling = visual_head_pooling
        self.visual_heads = nn.ModuleList(
            ClusterHead(self.visual.out_channels, head_hidden_dim, num_clusters)
            for _ in range(num_heads)
        )
        self.audio_heads = nn.ModuleList(
            ClusterHead(self.audio.out_channels, head_hidden_dim, num_clusters)
            for _ in range(num_heads)
        )

    @classmethod
    def from_config(cls, cfg: CfgNode) -> AVModel:
        m = cfg.MODEL
        return cls(
            visual_arch=m.VISUAL.ARCH,
            visual_last_stage=m.VISUAL.LAST_STAGE,
            audio_arch=m.AUDIO.ARCH,
            audio_last_stage=m.AUDIO.LAST_STAGE,
            embed_dim=m.EMBED_DIM,
            pooling=m.POOLING,
            topk_fraction=m.POOLING_TOPK,
            temperature=m.TEMPERATURE,
            learn_temperature=m.LEARN_TEMPERATURE,
            num_clusters=m.NUM_CLUSTERS,
            num_heads=m.NUM_HEADS,
            head_hidden_dim=m.HEAD_HIDDEN_DIM,
            visual_head_pooling=m.VISUAL.HEAD_POOLING,
            spectrogram=build_spectrogram(cfg),
        )

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def audio_input(self, audio: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, T] -> spectrograms [B, 1, F, T'] (float32, outside autocast); a
        spectrogram batch [B, 1, F, T'] passes through."""
        if audio.ndim == 4:
            return audio
        if self.spectrogram is None:
            raise ValueError("this model has no spectrogram front end: pass [B, 1, F, T] inputs")
        with torch.autocast(audio.device.type, enabled=False):
            return self.spectrogram(audio.float()).unsqueeze(1)

    def embed_frames(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [B, 3, H, W] -> trunk features [B, C, h, w] and the L2-normalised map [B, D, h, w]."""
        features, visual_map = self.visual(frames)
        return features, F.normalize(visual_map, dim=1)

    def pool_visual(
        self, features: torch.Tensor, visual_map: torch.Tensor, audio_embedding: torch.Tensor
    ) -> torch.Tensor:
        """The trunk features [B, C, h, w] that g_v sees, pooled to [B, C].

        "heatmap" pools them where the pair score looks (the clip's own heatmap, weights
        detached), so g_v describes the sounding object rather than everything in the frame.
        """
        if self.visual_head_pooling == "max":
            return features.amax(dim=(2, 3))
        if self.visual_head_pooling == "mean":
            return features.mean(dim=(2, 3))
        with torch.no_grad():
            weights = pooling_weights(
                heatmaps(visual_map, audio_embedding), self.pooling, self.topk_fraction
            )
        return torch.einsum("bchw,bhw->bc", features, weights.to(features.dtype))

    def forward(self, frames: torch.Tensor, audio: torch.Tensor) -> AVOutput:
        """frames [B, 3, H, W], audio [B, T] waveforms (or [B, 1, F, T] spectrograms) -> AVOutput."""
        spectrograms = self.audio_input(audio)
        visual_features, visual_map = self.embed_frames(frames)
        audio_features, audio_embedding = self.audio(spectrograms)
        audio_embedding = F.normalize(audio_embedding, dim=1)
        pooled_visual = self.pool_visual(visual_features, visual_map, audio_embedding)
        return AVOutput(
            visual_map=visual_map,
            audio_embedding=audio_embedding,
            visual_logits=[head(pooled_visual) for head in self.visual_heads],
            audio_logits=[head(audio_features) for head in self.audio_heads],
        )


def build_av_model(cfg: CfgNode) -> AVModel:
    """The AV model of the config, its visual trunk initialised from MODEL.VISUAL.WEIGHTS if set."""
    model = AVModel.from_config(cfg)
    if cfg.MODEL.VISUAL.WEIGHTS:
        load_resnet_weights(model.visual.trunk, cfg.MODEL.VISUAL.WEIGHTS)
    # Channels-last convolutions: a training step of the toy config is about 20% faster on CPU
    # (docs/benchmarks.md); the same results up to float rounding.
    return model.to(memory_format=torch.channels_last)
