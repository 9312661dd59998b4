"""Sinkhorn-Knopp self-labelling: balanced pseudo-labels from cluster probabilities.

SeLa / SeLaVi (Asano et al.) and SwAV (Caron et al.) label N samples with K clusters by the
entropic optimal transport plan Q = diag(r) P**lam diag(c) whose rows sum to 1/N and whose
columns sum to a cluster marginal b, so that no cluster can swallow the dataset. The label of
a sample is the argmax of its row of Q.

The solve alternates exact row scaling with column scaling (Sinkhorn-Knopp), written as a
fixed-point iteration on the column log-scalings g = log c and accelerated with Anderson mixing
(a standard, safeguarded extrapolation over the last few iterates): on VGGSound-sized problems it
needs ~10 passes over P where plain Sinkhorn-Knopp needs ~100 (see benchmarks/sinkhorn.py).

Numerics: P**lam underflows float64 for lam = 20 and probabilities below ~1e-16 of the row
maximum, so the kernel is built in the log domain and normalised by its row and column maxima
(both only rescale rows or columns, which does not change the plan). The dense path holds the
kernel in float64 and works through it in cache-sized row blocks. The chunked path
(`chunk_size`) holds only the [K] scalings and streams the rows in float32 chunks, recomputing
each chunk's kernel in the log domain, so the working memory is O(chunk_size * K) whatever N is;
the input may then be a float16 tensor or a numpy memmap.

Distributed: with `distributed=True` each process passes its own rows; the only cross-process
quantities are the [K] column sums (all-reduced, SwAV style), the column maxima and the row
count, so the solve is exact for the union of the rows and every process labels its own rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed import ProcessGroup

log = logging.getLogger(__name__)

# Plan entries within this relative distance of their row's maximum count as tied (identical
# rows, e.g. an untrained head with uniform outputs); see `_argmax_spread_ties`.
TIE_RTOL = 1e-5
# An Anderson step whose marginal error exceeds this factor times the best error so far is
# rejected and replaced by a plain Sinkhorn-Knopp step from the best iterate.
SAFEGUARD = 2.0
# Log-kernel entries (relative to a maximum of 0) below these floors become exact zeros: they
# are negligible in every sum, and exp of -inf or of subnormal results runs 10-100x slower on
# CPUs and slows every later op that reads them.
EXP_FLOOR = {torch.float32: -75.0, torch.float64: -690.0}
# The dense path works on row blocks of about this many float64 entries (2 MiB), which stay in
# a CPU cache across the several ops applied to each block (~1.5x faster than whole-matrix ops).
CPU_BLOCK_ENTRIES = 2**18

Probs = torch.Tensor | np.ndarray
ColumnSums = Callable[[torch.Tensor], torch.Tensor]


def sinkhorn_knopp(
    probs: Probs,
    *,
    lam: float = 20.0,
    cluster_marginal: torch.Tensor | None = None,
    tol: float = 1e-2,
    max_iter: int = 2000,
    return_plan: bool = False,
    chunk_size: int | None = None,
    anderson_depth: int = 5,
    distributed: bool = False,
    group: ProcessGroup | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Balanced pseudo-labels: argmax of the transport plan Q = diag(r) probs**lam diag(c).

    Args:
        probs: [N, K] non-negative scores, typically cluster probabilities (rows need not sum to
            1: scaling a row does not change the plan); any float dtype, or a numpy array or
            memmap. Each row needs a positive entry, and each cluster a positive entry somewhere.
        lam: inverse entropic regularisation (SeLaVi uses 20); larger = harder assignments.
        cluster_marginal: [K] positive target cluster masses summing to 1; None = uniform
            (equipartition). See `avdet.selflabel.schedule.make_cluster_marginal`.
        tol: stop when the marginal error is below it. The error is the largest relative
            deviation of a column sum from its target, max_k |sum_i Q_ik / b_k - 1|, measured
            after the row scaling (so the rows are exact). 1e-2 keeps every cluster within 1 %
            of its mass; looser values change labels near cluster boundaries (SeLaVi's 0.1 is on
            a different, N-dependent measure). With `chunk_size` (float32) keep it >= 1e-4.
        max_iter: maximum passes over `probs`; if tol is not met the best iterate is used and a
            warning is logged.
        return_plan: also return the [N, K] plan Q (float64; float32 with `chunk_size`).
        chunk_size: stream rows in float32 chunks of this many rows instead of materialising
            the [N, K] float64 kernel (memory-bounded path).
        anderson_depth: number of past iterates Anderson mixing uses; 0 = plain Sinkhorn-Knopp.
        distributed: `probs` holds this process's rows of a dataset spread over the processes of
            `group` (torch.distributed must be initialised); every process must call this with
            the same arguments otherwise. Labels and plan are for the local rows; the plan's
            rows sum to 1 / (total rows).
        group: process group for `distributed` (None = the default group).

    Returns:
        [N] int64 labels on probs' device, and with `return_plan` also the [N, K] plan. Rows
        whose largest plan entries tie (to TIE_RTOL) are dealt round-robin over the tied
        clusters by row index, so uniform input gives each cluster N/K labels (+-1).

    Raises:
        ValueError: wrong shapes, NaN/inf or negative probabilities, an all-zero row or
            column, or a marginal that is not positive or does not sum to 1.
    """
    if lam <= 0 or tol <= 0 or max_iter < 1 or anderson_depth < 0:
        raise ValueError(
            f"sinkhorn_knopp: need lam > 0, tol > 0, max_iter >= 1 and anderson_depth >= 0, got "
            f"lam={lam}, tol={tol}, max_iter={max_iter}, anderson_depth={anderson_depth}"
        )
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"sinkhorn_knopp: chunk_size must be >= 1, got {chunk_size}")
    if distributed and not dist.is_initialized():
        raise RuntimeError("sinkhorn_knopp(distributed=True) needs torch.distributed initialised")
    if not isinstance(probs, torch.Tensor | np.ndarray) or probs.ndim != 2:
        raise ValueError(
            f"sinkhorn_knopp: probs must be a 2-D [N, K] tensor or array, got "
            f"{type(probs).__name__} of shape {tuple(getattr(probs, 'shape', ()))}"
        )
    device = probs.device if isinstance(probs, torch.Tensor) else torch.device("cpu")
    pg = (group if group is not None else dist.group.WORLD) if distributed else None
    n, row_offset = _row_count(probs.shape, pg)
    marginal = _check_marginal(cluster_marginal, probs.shape[1], device)

    if chunk_size is None:
        kernel = torch.empty(probs.shape, dtype=torch.float64, device=device)
        rows = len(kernel) if device.type == "cuda" else max(1, CPU_BLOCK_ENTRIES // len(marginal))
        blocks = kernel.split(rows)
        log_col_max = _column_max_pass(_copy_rows(probs, blocks), row_offset, pg)
        for block in blocks:  # (p / row max / column max)**lam: rows and columns have max 1
            _exp_(block.sub_(log_col_max).mul_(lam))
        col_sums = _dense_column_sums(blocks, n, pg)
    else:
        chunks = _row_chunks(probs, chunk_size, device)
        log_offset = -lam * _column_max_pass(chunks, row_offset, pg)
        col_sums = _chunked_column_sums(probs, lam, log_offset, n, chunk_size, device, pg)

    g = _solve(col_sums, marginal, tol, max_iter, anderson_depth)

    if chunk_size is None:  # plan rows are kernel * c up to their normalisation
        c = g.exp()
        scores = (block.mul_(c) for block in blocks)
    else:  # with return_plan every chunk needs its own memory
        chunks = _row_chunks(probs, chunk_size, device)
        scores = (
            _chunk_scores(x.clone() if return_plan else x, lam, log_offset + g) for x in chunks
        )
    labels, plan_blocks = _labels(scores, n, row_offset, return_plan)
    if not return_plan:
        return labels
    return labels, (kernel if chunk_size is None else torch.cat(plan_blocks))


def _solve(
    col_sums: ColumnSums, marginal: torch.Tensor, tol: float, max_iter: int, depth: int
) -> torch.Tensor:
    """Column log-scalings g [K] (float64) whose plan meets the marginal b to tol.

    Plain Sinkhorn-Knopp is g <- g + f(g) with the residual f = log b - log colsums(g); Anderson
    mixing replaces it by the combination of the last `depth` steps that best cancels f, and
    falls back to a plain step from the best iterate when that combination does worse.
    """
    log_b = marginal.log()
    g = torch.zeros_like(marginal)
    best_g, best_f, best_err = g, g, float("inf")
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (g_t, f_t) of recent iterates
    accelerated = False  # whether g came from an Anderson step
    for it in range(max_iter):
        col = col_sums(g)
        err = (col / marginal - 1).abs().max().item()
        if err < tol:
            log.debug("sinkhorn_knopp: marginal error %.2e after %d passes", err, it + 1)
            return g
        f = log_b - col.log()
        finite = math.isfinite(err) and bool(torch.isfinite(f).all())
        if accelerated and not (finite and err <= SAFEGUARD * best_err):
            history.clear()
            g, accelerated = best_g + best_f, False
        elif not finite:
            raise FloatingPointError(
                f"sinkhorn_knopp: column sums {col.min().item()}..{col.max().item()} at pass "
                f"{it + 1}: the kernel under- or overflows, try a smaller lam"
            )
        else:
            if err < best_err:
                best_g, best_f, best_err = g, f, err
            history = [*history[-depth:], (g, f)] if depth else []
            accelerated = len(history) > 1
            g = _anderson_step(history) if accelerated else g + f
        g = g - g.max()  # only ratios of the scalings matter; keep them <= 1
    log.warning(
        "sinkhorn_knopp: marginal error %.3g after max_iter=%d passes is above tol=%g",
        best_err,
        max_iter,
        tol,
    )
    return best_g


def _anderson_step(history: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Anderson (type II) mixing of the fixed-point map g -> g + f over the recent iterates."""
    gs, fs = (torch.stack(v, 1) for v in zip(*history, strict=True))  # [K, m + 1] each
    d_f, d_g = fs.diff(dim=1), gs.diff(dim=1)
    gram = d_f.T @ d_f
    gram.diagonal().add_(1e-10 * gram.diagonal().max() + 1e-300)  # guards collinear steps
    gamma = torch.linalg.solve(gram, d_f.T @ fs[:, -1])
    return gs[:, -1] + fs[:, -1] - (d_g + d_f) @ gamma


def _dense_column_sums(
    blocks: tuple[torch.Tensor, ...], n: int, pg: ProcessGroup | None
) -> ColumnSums:
    """Column sums of the row-normalised plan for the row blocks of a float64 [N, K] kernel."""

    def col_sums(g: torch.Tensor) -> torch.Tensor:
        c = g.exp()
        col = torch.zeros_like(g)
        for block in blocks:
            col.addmv_(block.T, 1.0 / (n * (block @ c)))  # exact row scaling: rows sum to 1 / n
        return _all_reduce(col * c, pg)

    return col_sums


def _chunked_column_sums(
    probs: Probs,
    lam: float,
    log_offset: torch.Tensor,
    n: int,
    chunk_size: int,
    device: torch.device,
    pg: ProcessGroup | None,
) -> ColumnSums:
    """Like `_dense_column_sums`, streaming float32 row chunks (one pass over probs per call)."""

    def col_sums(g: torch.Tensor) -> torch.Tensor:
        col = torch.zeros_like(g)
        for chunk in _row_chunks(probs, chunk_size, device):
            scores = _chunk_scores(chunk, lam, log_offset + g)
            col += (scores.T @ (1.0 / (n * scores.sum(1)))).double()
        return _all_reduce(col, pg)

    return col_sums


def _chunk_scores(chunk: torch.Tensor, lam: float, log_c: torch.Tensor) -> torch.Tensor:
    """Plan rows up to a per-row factor, chunk**lam * c scaled to row max 1 (in place, float32).

    The log-domain form lam * (log p + log c / lam) - row max never under- or overflows.
    """
    y = chunk.log_().add_((log_c / lam).to(chunk.dtype))
    return _exp_(y.sub_(y.amax(1, keepdim=True)).mul_(lam))


def _exp_(log_x: torch.Tensor) -> torch.Tensor:
    """In place exp of a log kernel (max 0), zeroing entries below EXP_FLOOR without slow paths."""
    floor = EXP_FLOOR[log_x.dtype]
    return F.threshold_(log_x.clamp_(min=floor).exp_(), 1.5 * math.exp(floor), 0.0)


def _column_max(local_max: torch.Tensor, pg: ProcessGroup | None) -> torch.Tensor:
    """[K] column maxima of the row-normalised log probs over all processes; no -inf allowed."""
    col_max = _all_reduce(local_max, pg, op=dist.ReduceOp.MAX)
    empty = torch.isneginf(col_max).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"sinkhorn_knopp: clusters {empty[:10]} have zero probability in every row (or it "
            "underflows the input dtype), so no plan can give them their marginal mass"
        )
    return col_max


def _column_max_pass(
    chunks: Iterator[torch.Tensor], row_offset: int, pg: ProcessGroup | None
) -> torch.Tensor:
    """Validate row chunks and turn each into log(p / row max) in place; [K] float64 column max.

    Errors are raised on every process of a distributed solve.
    """
    col_max = torch.tensor(-math.inf, dtype=torch.float64)  # a 0-d CPU tensor mixes with CUDA
    error: ValueError | None = None
    try:
        for chunk in chunks:
            row_max = _validate_rows(chunk, row_offset, None)
            row_offset += len(chunk)
            col_max = torch.maximum(col_max, chunk.div_(row_max[:, None]).log_().amax(0).double())
    except ValueError as exc:
        error = exc
    _agree_valid(error, pg)
    return _column_max(col_max, pg)


def _row_chunks(probs: Probs, chunk_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """Consecutive [<= chunk_size, K] float32 row chunks of probs, all in one reused buffer.

    Each chunk is overwritten by the next one: no allocation per chunk.
    """
    n, k = probs.shape
    buf = torch.empty(min(chunk_size, n), k, device=device)
    return _copy_rows(probs, (buf[: min(chunk_size, n - s)] for s in range(0, n, chunk_size)))


def _copy_rows(probs: Probs, blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Copy the next len(block) rows of probs (tensor, array or memmap) into each block."""
    start = 0
    for block in blocks:
        rows = probs[start : start + len(block)]
        if isinstance(rows, np.ndarray):  # numpy casts into the block; the array may be read-only
            np.copyto(block.numpy(), rows)
        else:
            block.copy_(rows)
        start += len(block)
        yield block


def _labels(
    score_blocks: Iterable[torch.Tensor], n: int, row_offset: int, return_plan: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Labels of consecutive blocks of plan scores (rows of the plan up to their scale).

    With return_plan the blocks are also normalised in place to plan rows summing to 1 / n.
    """
    labels, plan = [], []
    for scores in score_blocks:
        labels.append(_argmax_spread_ties(scores, row_offset))
        row_offset += len(scores)
        if return_plan:
            plan.append(scores.div_(scores.sum(1, keepdim=True) * n))
    return torch.cat(labels), plan


def _argmax_spread_ties(scores: torch.Tensor, row_offset: int) -> torch.Tensor:
    """Row-wise argmax of [B, K] plan scores; ties go round-robin over the tied clusters.

    torch.argmax would send every tied row to its first tied cluster, so an untrained head with
    uniform outputs would put the whole dataset in cluster 0. Row i (global index
    row_offset + i) instead takes the (i mod t)-th of its t tied clusters, which splits tied
    rows over those clusters in equal shares, as the plan does.
    """
    if scores.shape[1] == 1:
        return torch.zeros(len(scores), dtype=torch.int64, device=scores.device)
    top, labels = scores.topk(2, dim=1)  # [B, 2] each; no [B, K] temporary
    rows = (top[:, 1] >= top[:, 0] * (1 - TIE_RTOL)).nonzero().flatten()
    if len(rows):
        tied = scores[rows] >= top[rows, :1] * (1 - TIE_RTOL)
        pick = (rows + row_offset) % tied.sum(1)
        labels[rows, 0] = ((tied.cumsum(1) == pick[:, None] + 1) & tied).int().argmax(1)
    return labels[:, 0].contiguous()


def _validate_rows(x: torch.Tensor, row_offset: int, pg: ProcessGroup | None) -> torch.Tensor:
    """[B] row maxima of x; ValueError on NaN/inf, negative entries or all-zero rows.

    In a distributed solve every process raises if any one does.
    """
    row_min, row_max = torch.aminmax(x, dim=1)  # NaN propagates to both
    error = None
    if not (torch.isfinite(row_min).all() and torch.isfinite(row_max).all()):
        error = ValueError("sinkhorn_knopp: probs contain NaN or inf")
    elif (row_min < 0).any():
        lowest = row_min.min().item()
        error = ValueError(f"sinkhorn_knopp: probs contain negative values (min {lowest})")
    elif (row_max <= 0).any():
        row = int((row_max <= 0).nonzero()[0]) + row_offset
        error = ValueError(f"sinkhorn_knopp: row {row} of probs is all zeros")
    _agree_valid(error, pg)
    return row_max


def _all_reduce(
    x: torch.Tensor, pg: ProcessGroup | None, op: dist.ReduceOp = dist.ReduceOp.SUM
) -> torch.Tensor:
    """All-reduce x over the process group (identity for a single-process solve).

    This is the only communication of the solve: [K] column sums or maxima and a few scalars.
    NCCL needs CUDA tensors, so x travels through the backend's device.
    """
    if pg is None:
        return x
    nccl = dist.get_backend(pg) == dist.Backend.NCCL
    buf = x.to("cuda" if nccl else "cpu")
    dist.all_reduce(buf, op=op, group=pg)
    return buf.to(x.device)


def _agree_valid(error: ValueError | None, pg: ProcessGroup | None) -> None:
    """Raise `error`; in a distributed solve make every process raise if any one has to."""
    failed = _all_reduce(torch.tensor([float(error is not None)]), pg, op=dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if failed.item():
        raise ValueError("sinkhorn_knopp: another process found invalid probs (see its error)")


def _row_count(shape: torch.Size, pg: ProcessGroup | None) -> tuple[int, int]:
    """(total rows over the processes, index of this process's first row); checks N, K >= 1."""
    n_local, k = shape
    world, rank = (dist.get_world_size(pg), dist.get_rank(pg)) if pg is not None else (1, 0)
    counts = torch.zeros(world, 2, dtype=torch.float64)
    counts[rank] = torch.tensor([n_local, k])
    counts = _all_reduce(counts, pg)  # row r holds process r's (N, K)
    if (counts < 1).any() or (counts[:, 1] != k).any():
        raise ValueError(
            "sinkhorn_knopp: probs must be [N, K] with N, K >= 1 and the same K on every "
            f"process, got (N, K) per process: {counts.long().tolist()}"
        )
    return int(counts[:, 0].sum()), int(counts[:rank, 0].sum())


def _check_marginal(marginal: torch.Tensor | None, k: int, device: torch.device) -> torch.Tensor:
    """[K] float64 cluster marginal, uniform if None; positive and summing to 1."""
    if marginal is None:
        return torch.full((k,), 1.0 / k, dtype=torch.float64, device=device)
    marginal = torch.as_tensor(marginal).to(device=device, dtype=torch.float64)
    if marginal.shape != (k,):
        raise ValueError(
            f"sinkhorn_knopp: cluster_marginal must have shape ({k},), got {tuple(marginal.shape)}"
        )
    if not torch.isfinite(marginal).all() or (marginal <= 0).any():
        raise ValueError("sinkhorn_knopp: cluster_marginal must be finite and positive")
    total = marginal.sum().item()
    if abs(total - 1) > 1e-6:
        raise ValueError(f"sinkhorn_knopp: cluster_marginal must sum to 1, sums to {total}")
    return marginal / total
