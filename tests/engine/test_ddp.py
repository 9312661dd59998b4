"""Two gloo processes on the CPU train exactly like one process with the same global batch."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import torch
from engine_toy_task import ToyModel, ToyRegression, ddp_main, mse_loss, toy_cfg

from avdet.engine.checkpoint import load_checkpoint
from avdet.engine.launch import launch
from avdet.engine.trainer import Trainer
from avdet.utils.io import read_jsonl
from avdet.utils.seed import seed_all

MAX_ITER = 6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One launch of 2 processes (ddp_main), and the same training in this single process."""
    out = tmp_path_factory.mktemp("ddp")
    # a short collective timeout turns a deadlock into an error instead of a hung test
    launch(ddp_main, 2, args=(str(out), MAX_ITER), backend="gloo", timeout=timedelta(seconds=60))
    seed_all(0)
    cfg = toy_cfg(out / "single", MAX_ITER=MAX_ITER, LOG_PERIOD=1, CHECKPOINT_PERIOD=100)
    Trainer(cfg, ToyModel(), ToyRegression(), mse_loss).train()
    return out


@pytest.mark.parametrize("run", ["full", "resumed"])
def test_two_processes_match_one_process(runs, run):
    single = read_jsonl(runs / "single" / "metrics.json")
    multi = read_jsonl(runs / run / "metrics.json")  # written once, by rank 0
    assert [r["iteration"] for r in multi] == list(range(MAX_ITER))
    for one, two in zip(single, multi, strict=True):
        assert two["total_loss"] == pytest.approx(one["total_loss"], abs=1e-6, rel=0)
        assert two["lr"] == pytest.approx(one["lr"], abs=1e-12)
    expected = load_checkpoint(runs / "single" / "model_final.pth")["model"]
    final = load_checkpoint(runs / run / "model_final.pth")
    for key, value in expected.items():
        torch.testing.assert_close(final["model"][key], value, atol=1e-6, rtol=0)
    assert len(final["processes"]) == 2  # both processes' RNG states are kept
    assert (runs / run / "log.txt").exists() and (runs / run / "log.txt.rank1").exists()


def test_resumed_multi_process_run_is_bitwise_the_uninterrupted_one(runs):
    full = load_checkpoint(runs / "full" / "model_final.pth")["model"]
    resumed = load_checkpoint(runs / "resumed" / "model_final.pth")["model"]
    assert all(torch.equal(resumed[k], v) for k, v in full.items())


def test_collective_helpers(runs):
    reports = [json.loads((runs / f"comm_rank{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2
        assert report["gathered_shapes"] == [[1, 2], [2, 2]]  # first dimensions may differ
        assert report["gathered_values"] == [0.0, 4.0]
        assert report["mean"] == 1.0 and report["max"] == 2.0
        assert report["broadcast"] == {"from": 0}
        assert report["reduced"] == {"a": 0.5, "b": 5.0}


def test_nan_on_one_process_stops_every_process(runs):
    errors = [json.loads((runs / f"comm_rank{r}.json").read_text())["nan_error"] for r in (0, 1)]
    for error in errors:
        assert error.startswith("iteration 0: non-finite loss on at least one process")
    assert "loss_mse=nan" in errors[1] and "loss_mse=nan" not in errors[0]
    assert not list((runs / "nan").glob("*.pth"))
