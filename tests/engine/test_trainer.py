"""The Trainer: resume equals uninterrupted (bitwise), NaN handling, metrics, sampler, hooks."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from engine_toy_task import DrawHook, ToyModel, ToyRegression, evaluate, mse_loss, toy_cfg

from avdet.engine.checkpoint import load_checkpoint
from avdet.engine.solver import lr_factor
from avdet.engine.trainer import (
    EvalHook,
    HookBase,
    NonFiniteLossError,
    Trainer,
    TrainingSampler,
    per_process_batch_size,
)
from avdet.utils.io import read_jsonl
from avdet.utils.seed import seed_all

TIMING = ("time", "data_time", "eta_seconds")


def _train(cfg, hooks=(), seed=0, loss_fn=mse_loss, **train_kwargs):
    """Build everything afresh (as a new process would) and train; returns the trainer."""
    seed_all(seed)
    trainer = Trainer(cfg, ToyModel(dropout=0.1), ToyRegression(), loss_fn, hooks=[*hooks])
    trainer.train(**train_kwargs)
    return trainer


def _losses(output_dir):
    """metrics.json without the timing fields (which legitimately differ between runs)."""
    return [
        {k: v for k, v in r.items() if k not in TIMING}
        for r in read_jsonl(output_dir / "metrics.json")
    ]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-iteration run (dropout, noisy data, a stateful hook)."""
    out = tmp_path_factory.mktemp("uninterrupted")
    hook = DrawHook()
    trainer = _train(toy_cfg(out), hooks=[hook])
    return trainer, hook, out


def test_metrics_lines_and_outputs(reference):
    trainer, _, out = reference
    records = read_jsonl(out / "metrics.json")
    assert [r["iteration"] for r in records] == [1, 3, 5, 7, 9, 11]
    for r in records:
        assert r["lr"] == pytest.approx(
            0.05 * lr_factor(r["iteration"], max_iter=12, warmup_iters=3, warmup_factor=0.1)
        )
        assert r["total_loss"] == pytest.approx(r["loss_mse"]) and "pred_mean" in r
        assert r["time"] > 0 and r["eta_seconds"] >= 0
    assert records[-1]["eta_seconds"] == 0
    assert records[-1]["total_loss"] < records[0]["total_loss"]  # it does learn
    names = {p.name for p in out.iterdir()}
    assert {"config.yaml", "last_checkpoint", "model_0000004.pth", "model_0000009.pth"} <= names
    assert "model_final.pth" in names and "model_final.pth.sha256" in names
    final = load_checkpoint(out / "model_final.pth")
    assert final["iteration"] == 11
    assert final["sampler"] == {"seed": 0, "dataset_size": 20, "epoch": 4, "offset": 16}
    assert final["hooks"]["DrawHook"]["draws"] == reference[1].draws
    assert len(final["processes"]) == 1 and set(final["processes"][0]) == {"rng", "metrics_window"}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stop_and_resume_equals_uninterrupted(reference, tmp_path, num_workers):
    ref_trainer, ref_hook, ref_out = reference
    cfg = toy_cfg(tmp_path)
    cfg.DATALOADER.NUM_WORKERS = num_workers
    _train(cfg, hooks=[DrawHook()], stop_at=7)
    assert json.loads((tmp_path / "last_checkpoint").read_text())["file"] == "model_0000006.pth"
    assert not (tmp_path / "model_final.pth").exists()
    # a new "process": other seed and other initial weights, which the resume must overwrite
    hook = DrawHook()
    resumed = _train(cfg, hooks=[hook], seed=123, resume=True)
    assert resumed.start_iter == 7
    assert _same_weights(resumed.model, ref_trainer.model)
    assert hook.draws == ref_hook.draws
    assert _losses(tmp_path) == _losses(ref_out)


class _Crash(HookBase):
    def after_step(self, trainer):
        if trainer.iter == 8:
            raise RuntimeError("simulated crash")


def test_crash_then_resume_from_periodic_checkpoint(reference, tmp_path):
    ref_trainer, _, ref_out = reference
    cfg = toy_cfg(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(cfg, hooks=[DrawHook(), _Crash()])
    assert json.loads((tmp_path / "last_checkpoint").read_text())["file"] == "model_0000004.pth"
    assert [r["iteration"] for r in read_jsonl(tmp_path / "metrics.json")] == [1, 3, 5, 7]
    resumed = _train(cfg, hooks=[DrawHook()], seed=7, resume=True)
    assert resumed.start_iter == 5
    assert _same_weights(resumed.model, ref_trainer.model)
    assert _losses(tmp_path) == _losses(ref_out)  # lines after the checkpoint were replaced


class _NanAt(HookBase):
    """A loss that is also a hook (it needs the iteration): NaN at iteration `at`."""

    def __init__(self, at: int) -> None:
        self.at = at

    def before_step(self, trainer):
        self.iter = trainer.iter

    def __call__(self, model, batch):
        losses = mse_loss(model, batch)
        if self.iter == self.at:
            losses["loss_mse"] = losses["loss_mse"] * float("nan")
        return losses


def test_nan_loss_stops_without_writing_a_checkpoint(tmp_path):
    nan_loss = _NanAt(7)
    with pytest.raises(NonFiniteLossError) as err:
        _train(toy_cfg(tmp_path), hooks=[nan_loss], loss_fn=nan_loss)
    message = str(err.value)
    assert message.startswith("iteration 7: non-finite loss")
    assert "loss_mse=nan" in message and "last checkpoint: model_0000004.pth" in message
    assert json.loads((tmp_path / "last_checkpoint").read_text())["file"] == "model_0000004.pth"
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["model_0000004.pth"]
    assert max(r["iteration"] for r in read_jsonl(tmp_path / "metrics.json")) < 7


class _PoisonWeights(HookBase):
    def after_step(self, trainer):
        if trainer.iter == 4:
            with torch.no_grad():
                trainer.model.net[0].weight[0, 0] = float("inf")


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"parameter net\.0\.weight is not finite"):
        _train(toy_cfg(tmp_path), hooks=[_PoisonWeights()])
    assert not list(tmp_path.glob("*.pth")) and not (tmp_path / "last_checkpoint").exists()


def test_loss_fn_must_return_a_loss_entry(tmp_path):
    with pytest.raises(ValueError, match=r"one tensor named 'loss\*'; got \['mse'\]"):
        _train(toy_cfg(tmp_path), loss_fn=lambda model, batch: {"mse": model(batch["x"]).mean()})


def test_model_weights_initialise_a_fresh_run(reference, tmp_path):
    ref_trainer, _, ref_out = reference
    cfg = toy_cfg(tmp_path)
    cfg.MODEL.WEIGHTS = str(ref_out / "model_final.pth")
    trainer = Trainer(cfg, ToyModel(), ToyRegression(), mse_loss)
    trainer.resume_or_load(resume=True)  # nothing to resume in tmp_path: MODEL.WEIGHTS is used
    assert trainer.start_iter == 0 and _same_weights(trainer.model, ref_trainer.model)


def test_eval_hook_logs_results_during_and_after_training(tmp_path):
    dataset = ToyRegression()
    seed_all(0)
    model = ToyModel()
    trainer = Trainer(
        toy_cfg(tmp_path),
        model,
        dataset,
        mse_loss,
        hooks=[EvalHook(4, lambda: {"mse": evaluate(model, dataset), "note": "x"})],
    )
    trainer.train()
    evals = [r for r in read_jsonl(tmp_path / "metrics.json") if "mse" in r]
    assert [r["iteration"] for r in evals] == [3, 7, 11] and "note" not in evals[0]
    assert evals[-1]["mse"] < evals[0]["mse"] and model.training


def _batches(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_shards_form_the_single_process_batch_and_resume():
    single = _batches(TrainingSampler(10, 6, seed=3), 5)
    ranks = [_batches(TrainingSampler(10, 3, seed=3, rank=r, world_size=2), 5) for r in (0, 1)]
    for step in range(5):
        assert sorted(ranks[0][step] + ranks[1][step]) == sorted(single[step])
    stream = [item for batch in single for item in batch]
    for epoch in range(3):  # 30 positions = 3 full permutations of the 10 items
        assert sorted(i for i, _ in stream[10 * epoch : 10 * epoch + 10]) == list(range(10))
    assert len({seed for _, seed in stream}) == 30  # one distinct seed per stream position
    assert _batches(TrainingSampler(10, 6, seed=3, start=12), 3) == single[2:5]
    assert _batches(TrainingSampler(10, 6, seed=4), 1) != single[:1]


def test_global_batch_must_split_evenly():
    assert per_process_batch_size(8, 2) == 4
    with pytest.raises(
        ValueError, match=r"IMS_PER_BATCH \(10\) must be a positive multiple .* \(3\)"
    ):
        per_process_batch_size(10, 3)


def test_a_skipped_first_step_does_not_warn_about_the_schedule(tmp_path):
    """AMP's scaler skips the first steps whose float16 gradients overflow; the schedule still
    counts the iteration, which torch would report as calling the scheduler before the optimiser."""
    seed_all(0)
    trainer = Trainer(toy_cfg(tmp_path), ToyModel(), ToyRegression(), mse_loss)
    scaler_step = trainer.scaler.step

    def skip_first(optimizer):
        if trainer.iter > 0:
            scaler_step(optimizer)

    trainer.scaler.step = skip_first
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [w for w in caught if "lr_scheduler.step" in str(w.message)]
    assert trainer.scheduler.last_epoch == trainer.iter + 1  # every iteration counted
