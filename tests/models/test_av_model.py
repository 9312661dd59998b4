"""Stage-1 model: heatmap/score shapes and meaning, InfoNCE and clustering loss against hand computation."""

from __future__ import annotations

import math

import pytest
import torch

from avdet.config import load_config
from avdet.models.av_model import (
    AVModel,
    background_score,
    heatmaps,
    pair_scores,
    pool_heatmap,
    pooling_weights,
)
from avdet.models.losses import clustering_loss, infonce


def small_model(**kwargs) -> AVModel:
    args = dict(visual_last_stage="layer2", audio_last_stage="layer2", embed_dim=16, num_clusters=5)
    args.update(kwargs)
    return AVModel(**args)


def test_forward_shapes_and_normalisation():
    torch.manual_seed(0)
    model = small_model(num_heads=3).eval()
    out = model(torch.randn(2, 3, 64, 96), torch.randn(2, 1, 40, 100))
    assert out.visual_map.shape == (2, 16, 8, 12)  # layer2: stride 8
    assert out.audio_embedding.shape == (2, 16)
    assert len(out.visual_logits) == len(out.audio_logits) == 3
    assert out.visual_logits[0].shape == out.audio_logits[2].shape == (2, 5)
    torch.testing.assert_close(out.visual_map.norm(dim=1), torch.ones(2, 8, 12))
    torch.testing.assert_close(out.audio_embedding.norm(dim=1), torch.ones(2))
    h = heatmaps(out.visual_map, out.audio_embedding)
    assert h.shape == (2, 8, 12)
    assert h.abs().max() <= 1 + 1e-5  # cosine similarities


def test_model_from_config_uses_its_keys():
    cfg = load_config(
        None, ["MODEL.NUM_CLUSTERS", "7", "MODEL.NUM_HEADS", "2", "MODEL.EMBED_DIM", "32"]
    )
    model = AVModel.from_config(cfg)
    assert len(model.visual_heads) == 2
    assert model.visual_heads[0].mlp[-1].out_features == 7
    assert model.visual.proj.out_channels == 32
    assert model.temperature.item() == pytest.approx(cfg.MODEL.TEMPERATURE)
    assert not any(p is model.log_temperature for p in model.parameters())
    learned = AVModel.from_config(load_config(None, ["MODEL.LEARN_TEMPERATURE", "True"]))
    assert any(p is learned.log_temperature for p in learned.parameters())


def test_heatmap_peaks_where_the_visual_feature_matches_the_audio():
    visual = torch.zeros(1, 2, 3, 4)
    visual[0, 0] = 1.0  # every location points along e0 ...
    visual[0, :, 1, 2] = torch.tensor([0.0, 1.0])  # ... except one, along e1
    audio = torch.tensor([[0.0, 1.0]])
    h = heatmaps(visual, audio)[0]
    assert h[1, 2] == 1.0 and h.sum() == 1.0


def test_pair_scores_pool_every_frame_with_every_audio():
    torch.manual_seed(1)
    visual = torch.nn.functional.normalize(torch.randn(3, 4, 2, 2), dim=1)
    audio = torch.nn.functional.normalize(torch.randn(3, 4), dim=1)
    scores = pair_scores(visual, audio, "max")
    for i in range(3):
        for j in range(3):
            expected = (visual[i] * audio[j].view(4, 1, 1)).sum(0).max()
            torch.testing.assert_close(scores[i, j], expected)
    mean_scores = pair_scores(visual, audio, "mean")
    torch.testing.assert_close(
        mean_scores[0, 1], (visual[0] * audio[1].view(4, 1, 1)).sum(0).mean()
    )


def test_lse_pooling_lies_between_mean_and_max():
    h = torch.tensor([[[0.1, 0.9], [0.2, 0.3]]])
    lse = pool_heatmap(h, "lse")
    assert pool_heatmap(h, "mean") < lse < pool_heatmap(h, "max")
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_heatmap(h, "median")


def test_topk_pooling_averages_the_highest_locations():
    h = torch.tensor([[[0.1, 0.9], [0.2, 0.3]], [[0.5, 0.4], [0.0, -0.2]]])
    torch.testing.assert_close(pool_heatmap(h, "topk", 0.5), torch.tensor([0.6, 0.45]))
    # ceil(fraction * h * w) locations, at least one: the extremes are max and mean
    torch.testing.assert_close(pool_heatmap(h, "topk", 0.01), pool_heatmap(h, "max"))
    torch.testing.assert_close(pool_heatmap(h, "topk", 1.0), pool_heatmap(h, "mean"))


@pytest.mark.parametrize("pooling", ["max", "topk", "mean"])
def test_pooling_weights_reproduce_the_pair_score(pooling):
    torch.manual_seed(0)
    h = torch.randn(3, 4, 5)
    weights = pooling_weights(h, pooling, 0.25)
    torch.testing.assert_close(weights.sum((1, 2)), torch.ones(3))
    torch.testing.assert_close((weights * h).sum((1, 2)), pool_heatmap(h, pooling, 0.25))
    assert int((weights[0] > 0).sum()) == {"max": 1, "topk": 5, "mean": 20}[pooling]


def test_heatmap_head_pooling_describes_where_the_sound_is():
    """g_v pools the trunk features where the clip's own pair score looks: it depends on the audio."""
    torch.manual_seed(0)
    model = small_model(pooling="topk", topk_fraction=0.25, visual_head_pooling="heatmap").eval()
    frames, specs = torch.randn(2, 3, 64, 64), torch.randn(2, 1, 32, 32)
    features, visual_map = model.visual(frames)
    visual_map = torch.nn.functional.normalize(visual_map, dim=1)
    _, audio = model.audio(specs)
    audio = torch.nn.functional.normalize(audio, dim=1)
    pooled = model.pool_visual(features, visual_map, audio)
    h = heatmaps(visual_map, audio)[0].flatten()
    top = h.topk(math.ceil(0.25 * h.numel())).indices
    torch.testing.assert_close(pooled[0], features[0].flatten(1)[:, top].mean(1))
    swapped = model(frames, specs.flip(0)).visual_logits[0]
    assert not torch.allclose(swapped, model(frames, specs).visual_logits[0])
    with pytest.raises(ValueError, match="visual head pooling"):
        small_model(visual_head_pooling="median")


def test_infonce_equals_hand_computed_value():
    scores = torch.tensor([[0.9, 0.1], [0.3, 0.5]])
    t = 0.5
    # frame->audio rows, audio->frame columns, each -log softmax of the diagonal entry
    rows = [-math.log(math.exp(0.9 / t) / (math.exp(0.9 / t) + math.exp(0.1 / t))),
            -math.log(math.exp(0.5 / t) / (math.exp(0.3 / t) + math.exp(0.5 / t)))]  # fmt: skip
    cols = [-math.log(math.exp(0.9 / t) / (math.exp(0.9 / t) + math.exp(0.3 / t))),
            -math.log(math.exp(0.5 / t) / (math.exp(0.1 / t) + math.exp(0.5 / t)))]  # fmt: skip
    expected = 0.5 * (sum(rows) / 2 + sum(cols) / 2)
    assert infonce(scores, t).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="square"):
        infonce(torch.zeros(2, 3), t)


def test_hard_negatives_join_both_directions_as_one_more_logit():
    scores = torch.tensor([[0.9, 0.1], [0.3, 0.5]])
    hard = torch.tensor([0.2, 0.4])
    t = 0.5

    def nll(positive: float, *negatives: float) -> float:
        logits = [positive, *negatives]
        return -math.log(math.exp(positive / t) / sum(math.exp(v / t) for v in logits))

    expected = 0.5 * (
        (nll(0.9, 0.1, 0.2) + nll(0.5, 0.3, 0.4)) / 2
        + (nll(0.9, 0.3, 0.2) + nll(0.5, 0.1, 0.4)) / 2
    )
    assert infonce(scores, t, hard).item() == pytest.approx(expected, rel=1e-6)
    assert infonce(scores, t, hard) > infonce(scores, t)  # a negative only adds loss


def test_background_score_averages_the_lowest_locations():
    h = torch.tensor([[[0.1, 0.9], [0.2, 0.3]], [[0.5, 0.4], [0.0, -0.2]]])
    torch.testing.assert_close(background_score(h, 0.5), torch.tensor([0.15, -0.1]))
    torch.testing.assert_close(background_score(h, 0.01), h.flatten(1).amin(1))


def test_infonce_prefers_matching_pairs():
    good = torch.eye(4) * 0.9
    bad = torch.ones(4, 4) * 0.9 - torch.eye(4) * 0.9
    assert infonce(good, 0.07) < math.log(4) < infonce(bad, 0.07)


def test_clustering_loss_averages_modalities_and_heads():
    v = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])]
    a = [torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])]
    y = torch.tensor([[0], [1]])
    ce = torch.nn.functional.cross_entropy
    head0 = 0.5 * (ce(v[0], y[0]) + ce(a[0], y[0]))
    head1 = 0.5 * (ce(v[1], y[1]) + ce(a[1], y[1]))
    torch.testing.assert_close(clustering_loss(v, a, y), (head0 + head1) / 2)


def test_one_training_step_lowers_the_contrastive_loss():
    torch.manual_seed(0)
    model = small_model()
    frames, specs = torch.randn(4, 3, 32, 32), torch.randn(4, 1, 32, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        out = model(frames, specs)
        loss = infonce(pair_scores(out.visual_map, out.audio_embedding, "max"), model.temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
