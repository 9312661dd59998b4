"""When pseudo-labels are recomputed, and the cluster marginal they are balanced against.

SeLa / SeLaVi recompute the Sinkhorn-Knopp labels a fixed number of times per run, more often
early, while the embedding (and so the clustering) still changes fast.
"""

from __future__ import annotations

import math

import torch


def label_update_iters(
    max_iter: int, num_updates: int, power: float = 2.0, start_iter: int = 0
) -> list[int]:
    """Training iterations at which to recompute pseudo-labels, denser early.

    Update i of num_updates happens at start_iter + floor((max_iter - start_iter) *
    (i / num_updates) ** power) (up to 1e-9, as 0.6 ** 2 < 0.36 in floating point): power 1
    spaces them evenly, power > 1 packs them towards start_iter. The result is sorted, free of
    duplicates (fewer than num_updates when the run is too short to separate them), starts with
    start_iter and stays below max_iter.
    """
    if not 0 <= start_iter < max_iter:
        raise ValueError(
            f"label_update_iters: need 0 <= start_iter < max_iter, got {start_iter}, {max_iter}"
        )
    if num_updates < 1 or power <= 0:
        raise ValueError(
            f"label_update_iters: need num_updates >= 1 and power > 0, got {num_updates}, {power}"
        )
    span = max_iter - start_iter
    offsets = {math.floor(span * (i / num_updates) ** power + 1e-9) for i in range(num_updates)}
    return sorted(start_iter + offset for offset in offsets)


def make_cluster_marginal(
    k: int, kind: str = "uniform", std: float = 0.1, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[K] float64 target cluster masses summing to 1, for `sinkhorn_knopp(cluster_marginal=)`.

    "uniform" is equipartition. "gaussian" (SeLaVi) weighs cluster k by |w_k|, w_k ~ N(1, std),
    then normalises, so the solve does not force exactly equal cluster sizes on data whose
    classes are not balanced; `generator` makes it reproducible.
    """
    if k < 1:
        raise ValueError(f"make_cluster_marginal: k must be >= 1, got {k}")
    if kind == "uniform":
        return torch.full((k,), 1.0 / k, dtype=torch.float64)
    if kind == "gaussian":
        if std < 0:
            raise ValueError(f"make_cluster_marginal: std must be >= 0, got {std}")
        weights = (1 + std * torch.randn(k, generator=generator, dtype=torch.float64)).abs()
        return weights / weights.sum()
    raise ValueError(f"make_cluster_marginal: kind must be 'uniform' or 'gaussian', got {kind!r}")
