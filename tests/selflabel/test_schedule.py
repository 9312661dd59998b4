"""Label-recomputation schedule and cluster marginals."""

from __future__ import annotations

import pytest
import torch

from avdet.selflabel.schedule import label_update_iters, make_cluster_marginal


def test_update_iters_power_law_values():
    assert label_update_iters(1000, 5, power=2.0) == [0, 40, 160, 360, 640]
    assert label_update_iters(1000, 4, power=1.0, start_iter=200) == [200, 400, 600, 800]


def test_update_iters_are_denser_early():
    iters = label_update_iters(10_000, 10, power=2.0, start_iter=500)
    assert iters[0] == 500 and iters[-1] < 10_000
    gaps = [b - a for a, b in zip(iters, iters[1:], strict=False)]
    assert gaps == sorted(gaps) and gaps[0] < gaps[-1]


def test_update_iters_deduplicate_short_runs():
    iters = label_update_iters(4, 10, power=3.0, start_iter=1)
    assert iters == sorted(set(iters)) and iters[0] == 1 and iters[-1] < 4
    assert label_update_iters(1, 3) == [0]


@pytest.mark.parametrize(
    "args", [(100, 0), (100, 5, 0.0), (100, 5, 2.0, 100), (100, 5, 2.0, -1), (0, 5)]
)
def test_update_iters_reject_bad_arguments(args):
    with pytest.raises(ValueError, match="label_update_iters"):
        label_update_iters(*args)


def test_uniform_marginal():
    marginal = make_cluster_marginal(7)
    assert marginal.dtype == torch.float64
    torch.testing.assert_close(marginal, torch.full((7,), 1 / 7, dtype=torch.float64))


def test_gaussian_marginal_is_a_reproducible_perturbation():
    marginal = make_cluster_marginal(300, "gaussian", 0.1, torch.Generator().manual_seed(0))
    again = make_cluster_marginal(300, "gaussian", 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(marginal, again)
    assert (marginal > 0).all()
    torch.testing.assert_close(marginal.sum(), torch.tensor(1.0, dtype=torch.float64))
    relative = marginal * 300  # weights |N(1, std)| over their mean
    assert 0.07 < relative.std() < 0.13 and relative.min() < 0.9 < 1.1 < relative.max()
    torch.testing.assert_close(make_cluster_marginal(5, "gaussian", 0.0), make_cluster_marginal(5))


@pytest.mark.parametrize("args", [(0,), (5, "zipf"), (5, "gaussian", -0.1)])
def test_marginal_rejects_bad_arguments(args):
    with pytest.raises(ValueError, match="make_cluster_marginal"):
        make_cluster_marginal(*args)
