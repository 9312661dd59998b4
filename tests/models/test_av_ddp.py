"""Stage 1 in 2 gloo processes: the loss and gradients equal one process with the global batch."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from av_ddp_worker import av_loss_worker, av_setup, loss_step

from avdet.engine.launch import launch


def test_two_processes_match_one_process_with_the_global_batch(tmp_path):
    launch(av_loss_worker, 2, args=(str(tmp_path),), backend="gloo", timeout=timedelta(seconds=60))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    cfg, model, batch, labels = av_setup()
    single = loss_step(model, model, cfg, batch, labels)
    # L_NC contrasts every frame with every audio of the gathered batch: the same in each process
    for rank in ranks:
        assert rank["losses"]["loss_nc"] == pytest.approx(single["losses"]["loss_nc"], abs=1e-6)
    # L_clust is a per-process mean; the processes' mean is the global one
    clust = sum(r["losses"]["loss_clust"] for r in ranks) / 2
    assert clust == pytest.approx(single["losses"]["loss_clust"], abs=1e-6)
    for name, grad in single["grads"].items():
        assert grad.abs().sum() > 0, name
        for rank in ranks:
            torch.testing.assert_close(rank["grads"][name], grad, atol=1e-6, rtol=1e-4)
