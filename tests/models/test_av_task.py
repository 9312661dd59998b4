"""Stage 1 end to end on the tiny toy set: train, self-label, checkpoint, resume, evaluate."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from avdet.config import load_config
from avdet.data.av_dataset import AVClipDataset
from avdet.data.sources import resolve_source
from avdet.engine.defaults import default_setup
from avdet.engine.tasks import get_task
from avdet.models.av_inference import heatmap_test_args, predict_av
from avdet.models.av_task import AVLoss, load_av_model
from avdet.models.heatmap_aug import smooth_heatmaps
from avdet.utils.io import read_jsonl

# A few steps of the tiny AV model (tiny_av_cfg).
TINY_TRAINING = [
    "MODEL.NUM_HEADS", "2",
    "SOLVER.IMS_PER_BATCH", "8",
    "SOLVER.MAX_ITER", "4",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.LOG_PERIOD", "1",
    "SOLVER.CHECKPOINT_PERIOD", "2",
    "SELFLABEL.NUM_UPDATES", "2",
    "TEST.NUM_VIS", "4",
]  # fmt: skip


def run_av(cfg, resume=False, eval_only=False, stop_at=None) -> dict:
    """What tools/train_net.py does in one process: setup (logging, seed), then the task."""
    args = argparse.Namespace(resume=resume, eval_only=eval_only, stop_at=stop_at)
    default_setup(cfg, args)
    return get_task("av")(cfg, args)


def test_training_writes_results_checkpoints_and_label_health(tiny_av_cfg, tmp_path):
    cfg = tiny_av_cfg(tmp_path, "TASK", "av", *TINY_TRAINING)
    results = run_av(cfg)
    saved = json.loads((tmp_path / "inference" / "av_results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for key in (
        "ciou50",
        "auc",
        "mean_ciou",
        "ciou50_ceiling",
        "pointing",
        "nmi",
        "ari",
        "accuracy",
    ):
        assert 0.0 <= results[key] <= 1.0, key
    assert results["num_images"] == results["num_clips"] > 0
    assert results["threshold_mode"] == "median"
    assert (tmp_path / "inference" / "heatmaps.png").stat().st_size > 0
    assert (tmp_path / "model_final.pth").exists() and (tmp_path / "config.yaml").exists()
    metrics = read_jsonl(tmp_path / "metrics.json")
    health = [m for m in metrics if "cluster_entropy" in m]
    assert [m["iteration"] for m in health] == [0, 1]  # 2 updates in 4 iterations: 4 * (i / 2) ** 2
    assert all(m["empty_clusters"] <= 3 and 0 < m["largest_cluster_share"] <= 1 for m in health)
    losses = [m for m in metrics if "loss_nc" in m]
    assert losses and all("loss_clust" in m for m in losses)
    state = torch.load(tmp_path / "model_final.pth", weights_only=True)
    labels = state["hooks"]["SelfLabelHook"]["labels"]
    assert labels.shape[0] == 2 and labels.dtype == torch.int64
    # the head the modalities agree on most is the one downstream stages read
    assert int(state["model"]["cluster_head"]) == state["hooks"]["SelfLabelHook"]["best_head"]
    assert {m["best_head"] for m in health} <= {0, 1}


def test_resume_ends_where_an_uninterrupted_run_ends(tiny_av_cfg, tmp_path):
    straight = tiny_av_cfg(tmp_path / "straight", "TASK", "av", *TINY_TRAINING)
    split = tiny_av_cfg(tmp_path / "split", "TASK", "av", *TINY_TRAINING)
    run_av(straight)
    run_av(split, stop_at=3)
    assert not (tmp_path / "split" / "model_final.pth").exists()
    run_av(split, resume=True)
    a = torch.load(tmp_path / "straight" / "model_final.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "model_final.pth", weights_only=True)
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    assert torch.equal(a["hooks"]["SelfLabelHook"]["labels"], b["hooks"]["SelfLabelHook"]["labels"])


def test_eval_only_reproduces_the_final_evaluation(tiny_av_cfg, tmp_path):
    cfg = tiny_av_cfg(tmp_path, "TASK", "av", *TINY_TRAINING)
    trained = run_av(cfg)
    again = run_av(
        tiny_av_cfg(tmp_path / "eval", "TASK", "av", *TINY_TRAINING,
                "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")),
        eval_only=True,
    )  # fmt: skip
    for key in ("ciou50", "pointing", "nmi", "accuracy"):
        assert again[key] == pytest.approx(trained[key]), key


def test_heatmap_augmentation_and_smoothing_change_the_maps_and_not_the_clusters(
    tiny_av_cfg, tmp_path
):
    plain = run_av(tiny_av_cfg(tmp_path, "TASK", "av", *TINY_TRAINING))
    weights = ["MODEL.WEIGHTS", str(tmp_path / "model_final.pth")]
    aug = ["TEST.HEATMAP_AUG.ENABLED", "True", "TEST.HEATMAP_AUG.SCALES", "(0.75, 1.0, 1.5)"]
    smooth = ["TEST.HEATMAP_SMOOTH", "0.75"]
    cfg = tiny_av_cfg(tmp_path / "aug", "TASK", "av", *TINY_TRAINING, *weights, *aug, *smooth)
    augmented = run_av(cfg, eval_only=True)
    assert plain["heatmap_aug"] is None and plain["heatmap_smooth"] == 0.0
    assert augmented["heatmap_aug"] == {"scales": [0.75, 1.0, 1.5], "flip": True}
    assert augmented["heatmap_smooth"] == 0.75
    for key in ("nmi", "accuracy", "num_images"):
        assert augmented[key] == plain[key], key

    model = load_av_model(cfg)
    dataset = AVClipDataset(cfg, resolve_source(cfg).prepared_dir, ["test"], train=False)
    base = predict_av(model, dataset, progress=False)
    args = heatmap_test_args(cfg)
    smoothed = predict_av(model, dataset, progress=False, **args)
    args.pop("smooth_sigma")
    views = predict_av(model, dataset, progress=False, **args)
    only_base = predict_av(model, dataset, progress=False, aug_scales=(1.0,), aug_flip=False)
    assert views.heatmaps.shape == base.heatmaps.shape
    assert not np.allclose(views.heatmaps, base.heatmaps, atol=1e-3)
    np.testing.assert_allclose(only_base.heatmaps, base.heatmaps, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(views.clusters, base.clusters)
    # smoothing comes after the mean over views, on every map
    expected = smooth_heatmaps(torch.from_numpy(views.heatmaps), 0.75).numpy()
    np.testing.assert_allclose(smoothed.heatmaps, expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(smoothed.clusters, base.clusters)


class _StubLabeller:
    num_clusters = 8
    best_head = 0

    def __init__(self, share: float) -> None:
        self.share = share

    def due(self, iteration: int) -> bool:
        return True

    def update(self, model) -> dict:
        return {
            "cluster_entropy": 0.1,
            "cluster_entropy_frac": 0.05,
            "largest_cluster_share": self.share,
            "empty_clusters": 6,
        }


class _StubTrainer:
    iter = 7
    model = argparse.Namespace(cluster_head=torch.zeros((), dtype=torch.int64))

    def __init__(self) -> None:
        self.logged: list[dict] = []

    def log_metrics(self, **scalars) -> None:
        self.logged.append(scalars)


def test_label_health_warns_once_on_collapse_and_on_a_stuck_clustering_loss(caplog):
    from avdet.models.av_task import SelfLabelHook

    loss = argparse.Namespace(last_clust_over_ln_k=0.99)
    hook = SelfLabelHook(_StubLabeller(share=0.9), loss)
    trainer = _StubTrainer()
    with caplog.at_level("WARNING", logger="avdet.models.av_task"):
        hook.before_step(trainer)
        hook.before_step(trainer)
    messages = [r.getMessage() for r in caplog.records]
    assert (
        sum("collapsed at iteration 7: 90% of the clips in one cluster" in m for m in messages) == 1
    )
    assert sum("L_clust is 0.99 x ln K" in m for m in messages) == 1
    assert trainer.logged[0]["largest_cluster_share"] == 0.9 and "ln_k" in trainer.logged[0]
    healthy = SelfLabelHook(_StubLabeller(share=0.2), argparse.Namespace(last_clust_over_ln_k=0.4))
    caplog.clear()
    healthy.before_step(trainer)
    assert not caplog.records


def test_cluster_clips_tool_labels_unseen_clips(tiny_av_cfg, toy_root, tmp_path):
    import runpy

    cfg = tiny_av_cfg(
        tmp_path / "av", "TASK", "av", *TINY_TRAINING, "SOLVER.MAX_ITER", "2", "TEST.NUM_VIS", "0"
    )
    run_av(cfg)
    videos = tmp_path / "new_clips"
    for i, source in enumerate(sorted((toy_root / "video").glob("*.mp4"))[:3]):
        (videos / "sub").mkdir(parents=True, exist_ok=True)
        (videos / "sub" / f"clip{i}.mp4").write_bytes(source.read_bytes())
    (videos / "broken.mp4").write_text("no video")
    tool = Path(__file__).resolve().parents[2] / "tools" / "cluster_clips.py"
    main = runpy.run_path(str(tool), run_name="not_main")["main"]
    config = tmp_path / "av" / "config.yaml"
    out = tmp_path / "clusters"
    csv_path = main(["--config-file", str(config), "--input", str(videos), "--output", str(out),
                     "MODEL.WEIGHTS", str(tmp_path / "av" / "model_final.pth"), "DATALOADER.PREPARE_WORKERS", "1"])  # fmt: skip
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "file,cluster,confidence" and len(rows) == 4  # the broken file is skipped
    clusters = {int(r.split(",")[1]) for r in rows[1:]}
    assert clusters <= {0, 1, 2}
    assert all(0 < float(r.split(",")[2]) <= 1 for r in rows[1:])
    assert {p.name for p in (out / "contact_sheets").iterdir()} == {
        f"cluster_{c}.png" for c in clusters
    }
    assert "broken" in (out / "prepared" / "failures.jsonl").read_text()


@pytest.mark.slow
def test_two_processes_train_self_label_and_evaluate(tiny_av_cfg, tmp_path):
    """`--num-gpus 2` end to end: DDP does not stall on the heads that wait for the first labels."""
    cfg = tiny_av_cfg(tmp_path / "run", "TASK", "av", *TINY_TRAINING, "SELFLABEL.START_ITER", "2")
    config = tmp_path / "av.yaml"
    config.write_text(cfg.dump())
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(repo / "tools" / "train_net.py"), "--config-file", str(config)]
    run = subprocess.run(
        [*cmd, "--num-gpus", "2"], capture_output=True, text=True, cwd=repo, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 process(es)" in (tmp_path / "run" / "log.txt").read_text()
    metrics = read_jsonl(tmp_path / "run" / "metrics.json")
    assert [m["iteration"] for m in metrics if "cluster_entropy" in m] == [2]
    assert any("loss_clust" in m for m in metrics)
    assert (tmp_path / "run" / "inference" / "av_results.json").exists()


@pytest.mark.parametrize("fraction", ["-0.1", "1.5"])
def test_hard_negative_fraction_outside_0_1_is_a_config_error(fraction):
    cfg = load_config(None, ["MODEL.HARD_NEGATIVE_FRACTION", fraction])
    with pytest.raises(ValueError, match="MODEL.HARD_NEGATIVE_FRACTION must lie in"):
        AVLoss(cfg, labeller=None, unwrapped=None)
