"""Sinkhorn-Knopp self-labelling: marginals, equivariance, dtypes, chunked and distributed."""

from __future__ import annotations

import logging
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avdet.selflabel.schedule import make_cluster_marginal
from avdet.selflabel.sinkhorn import sinkhorn_knopp


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny transposed mat-vecs with several BLAS threads take ~30 ms each on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_probs(n: int, k: int, seed: int = 0, scale: float = 3.0) -> torch.Tensor:
    """[N, K] float64 softmax of random logits: generic rows, no exact ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(scale * torch.randn(n, k, generator=g, dtype=torch.float64), 1)


def reference_plan(probs: torch.Tensor, lam: float, marginal: torch.Tensor) -> torch.Tensor:
    """Textbook log-domain Sinkhorn-Knopp in float64, iterated to machine precision."""
    log_k = lam * probs.double().log()
    n = len(probs)
    f = torch.zeros(n, dtype=torch.float64)
    g = torch.zeros(len(marginal), dtype=torch.float64)
    for _ in range(2000):
        f = -torch.log(torch.tensor(float(n))) - torch.logsumexp(log_k + g, 1)
        g = marginal.log() - torch.logsumexp(log_k + f[:, None], 0)
    return torch.exp(log_k + f[:, None] + g)


def test_plan_matches_textbook_sinkhorn_and_meets_marginals():
    probs = random_probs(60, 4, scale=1.0)
    marginal = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    labels, plan = sinkhorn_knopp(
        probs, lam=3.0, cluster_marginal=marginal, tol=1e-10, return_plan=True
    )
    expected = reference_plan(probs, 3.0, marginal)
    torch.testing.assert_close(plan, expected, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(plan.sum(1), torch.full((60,), 1 / 60, dtype=torch.float64))
    torch.testing.assert_close(plan.sum(0), marginal)
    assert labels.dtype == torch.int64
    assert torch.equal(labels, expected.argmax(1))


@pytest.mark.parametrize("chunk_size", [None, 7])
@pytest.mark.parametrize("tol", [1e-1, 1e-2, 1e-4])
def test_marginals_met_to_tolerance(chunk_size, tol):
    probs = random_probs(203, 9, seed=1)
    labels, plan = sinkhorn_knopp(probs, tol=tol, return_plan=True, chunk_size=chunk_size)
    plan = plan.double()
    assert labels.shape == (203,)
    torch.testing.assert_close(plan.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert ((plan.sum(1) * 203 - 1).abs() < 1e-5).all()  # rows are scaled exactly
    assert (plan.sum(0) * 9 - 1).abs().max() < tol
    assert torch.equal(labels, plan.argmax(1))


@pytest.mark.parametrize("chunk_size", [None, 16])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("n, k", [(70, 7), (101, 7), (50, 50)])
def test_equipartition_on_uniform_input(n, k, dtype, chunk_size):
    probs = torch.full((n, k), 1.0 / k, dtype=dtype)
    counts = torch.bincount(sinkhorn_knopp(probs, chunk_size=chunk_size), minlength=k)
    assert counts.min() >= n // k and counts.max() <= -(-n // k)


def test_identical_rows_are_spread_over_the_marginal():
    """Rows that are all the same (an untrained head) must not all land in one cluster."""
    probs = torch.tensor([0.5, 0.3, 0.2]).repeat(90, 1)
    counts = torch.bincount(sinkhorn_knopp(probs), minlength=3)
    assert counts.tolist() == [30, 30, 30]


def test_row_permutation_permutes_labels():
    probs = random_probs(300, 8, seed=2)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(0))
    labels = sinkhorn_knopp(probs, tol=1e-8)
    assert torch.equal(sinkhorn_knopp(probs[perm], tol=1e-8), labels[perm])


def test_column_permutation_permutes_label_ids():
    probs = random_probs(300, 8, seed=3)
    marginal = make_cluster_marginal(8, "gaussian", 0.2, torch.Generator().manual_seed(0))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    labels = sinkhorn_knopp(probs, cluster_marginal=marginal, tol=1e-8)
    permuted = sinkhorn_knopp(probs[:, perm], cluster_marginal=marginal[perm], tol=1e-8)
    assert torch.equal(perm[permuted], labels)


def test_row_scaling_does_not_change_labels():
    probs = random_probs(120, 5, seed=4)
    scale = torch.rand(120, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(sinkhorn_knopp(probs * (scale + 0.01)), sinkhorn_knopp(probs))


def test_single_cluster():
    labels, plan = sinkhorn_knopp(random_probs(13, 1), return_plan=True)
    assert torch.equal(labels, torch.zeros(13, dtype=torch.int64))
    torch.testing.assert_close(plan, torch.full((13, 1), 1 / 13, dtype=torch.float64))


def test_n_not_divisible_by_k_and_fewer_rows_than_clusters():
    for n, k in [(103, 10), (3, 8)]:
        labels, plan = sinkhorn_knopp(random_probs(n, k, seed=n), tol=1e-6, return_plan=True)
        assert labels.shape == (n,) and labels.max() < k
        assert (plan.sum(0) * k - 1).abs().max() < 1e-6


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_input_gives_float64_solution(dtype):
    probs = random_probs(150, 6, seed=5).to(dtype)
    labels, plan = sinkhorn_knopp(probs, tol=1e-6, return_plan=True)
    assert plan.dtype == torch.float64
    assert torch.equal(labels, sinkhorn_knopp(probs.double(), tol=1e-6))


@pytest.mark.parametrize("scale, dtype", [(30.0, torch.float64), (60.0, torch.float32)])
def test_underflowing_kernel_stays_finite(scale, dtype):
    """probs**20 far below float64's range (and exact float32 zeros) must still be balanced."""
    logits = scale * torch.randn(200, 6, generator=torch.Generator().manual_seed(6))
    probs = torch.softmax(logits.to(dtype), 1)
    kernel = (probs.double() / probs.double().amax(1, keepdim=True)) ** 20
    assert (kernel == 0).double().mean() > 0.4  # a plain float64 kernel would be mostly zeros
    for chunk_size in (None, 64):
        labels, plan = sinkhorn_knopp(probs, tol=1e-3, return_plan=True, chunk_size=chunk_size)
        assert torch.isfinite(plan).all()
        assert (plan.double().sum(0) * 6 - 1).abs().max() < 1e-3
        counts = torch.bincount(labels, minlength=6)
        assert counts.min() >= 30 and counts.max() <= 37


def test_gaussian_marginal_is_respected_in_label_counts():
    marginal = make_cluster_marginal(6, "gaussian", 0.4, torch.Generator().manual_seed(7))
    probs = random_probs(6000, 6, seed=8, scale=0.5)
    counts = torch.bincount(sinkhorn_knopp(probs, cluster_marginal=marginal), minlength=6)
    share = counts.double() / 6000
    assert ((share - marginal).abs() / marginal).max() < 0.1
    assert torch.equal(share.argsort(), marginal.argsort())


def test_clear_clusters_are_recovered():
    groups = torch.arange(4).repeat_interleave(25)
    probs = torch.full((100, 4), 0.05)
    probs[torch.arange(100), groups] = 0.85
    probs += 0.02 * torch.rand(100, 4, generator=torch.Generator().manual_seed(9))
    assert torch.equal(sinkhorn_knopp(probs), groups)


def test_equipartition_overrides_an_unbalanced_preference():
    """All rows prefer cluster 0; the uniform marginal still spreads them, by their 2nd choice."""
    second = torch.arange(3).repeat_interleave(10)
    probs = torch.full((30, 3), 0.1)
    probs[:, 0] = 0.6
    probs[torch.arange(30), second] += 0.2
    labels = sinkhorn_knopp(probs, tol=1e-6)
    assert torch.bincount(labels, minlength=3).tolist() == [10, 10, 10]
    assert torch.equal(labels, second)


@pytest.mark.parametrize("chunk_size", [1, 33, 64, 1000])
def test_chunked_matches_dense(chunk_size):
    probs = random_probs(500, 11, seed=10).float()
    dense, dense_plan = sinkhorn_knopp(probs, tol=1e-4, return_plan=True)
    chunked, chunked_plan = sinkhorn_knopp(probs, tol=1e-4, return_plan=True, chunk_size=chunk_size)
    assert chunked_plan.dtype == torch.float32
    assert (dense == chunked).float().mean() >= 0.995
    torch.testing.assert_close(chunked_plan.double(), dense_plan, rtol=2e-3, atol=1e-7)


def test_chunked_reads_float16_tensors_and_memmaps(tmp_path):
    probs = random_probs(300, 10, seed=11).half()
    expected = sinkhorn_knopp(probs, tol=1e-4)
    array = np.lib.format.open_memmap(tmp_path / "p.npy", "w+", np.float16, (300, 10))
    array[:] = probs.numpy()
    array.flush()
    mapped = np.load(tmp_path / "p.npy", mmap_mode="r")
    for source in (probs, mapped):
        labels = sinkhorn_knopp(source, tol=1e-4, chunk_size=64)
        assert labels.dtype == torch.int64 and (labels == expected).float().mean() >= 0.99
    assert torch.equal(sinkhorn_knopp(mapped, tol=1e-4), expected)  # dense path reads it too


@pytest.mark.parametrize("chunk_size", [None, 8])
def test_input_is_left_unchanged(chunk_size):
    probs = random_probs(40, 5, seed=14)
    original = probs.clone()
    sinkhorn_knopp(probs, return_plan=True, chunk_size=chunk_size)
    assert torch.equal(probs, original)


def test_anderson_and_plain_iterations_reach_the_same_labels(caplog):
    probs = random_probs(400, 12, seed=12)
    with caplog.at_level(logging.DEBUG, logger="avdet.selflabel.sinkhorn"):
        plain = sinkhorn_knopp(probs, tol=1e-6, anderson_depth=0)
        accelerated = sinkhorn_knopp(probs, tol=1e-6)
    assert torch.equal(plain, accelerated)
    passes = [int(r.getMessage().split()[-2]) for r in caplog.records if "passes" in r.message]
    assert passes[1] < passes[0] / 2


def test_max_iter_reached_logs_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="avdet.selflabel.sinkhorn"):
        labels = sinkhorn_knopp(random_probs(100, 5), tol=1e-12, max_iter=3)
    assert labels.shape == (100,)
    assert any("max_iter=3" in record.message for record in caplog.records)


@pytest.mark.parametrize("chunk_size", [None, 4])
@pytest.mark.parametrize(
    "bad, message",
    [
        (float("nan"), "NaN"),
        (float("inf"), "NaN or inf"),
        (-0.1, "negative"),
    ],
)
def test_invalid_values_raise(bad, message, chunk_size):
    probs = random_probs(10, 3).float()
    probs[7, 1] = bad
    with pytest.raises(ValueError, match=message):
        sinkhorn_knopp(probs, chunk_size=chunk_size)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_all_zero_row_or_column_raises(chunk_size):
    probs = random_probs(10, 3)
    probs[6] = 0
    with pytest.raises(ValueError, match="row 6"):
        sinkhorn_knopp(probs, chunk_size=chunk_size)
    probs = random_probs(10, 3)
    probs[:, 2] = 0
    with pytest.raises(ValueError, match=r"clusters \[2\]"):
        sinkhorn_knopp(probs, chunk_size=chunk_size)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"probs": torch.rand(5)}, "2-D"),
        ({"probs": torch.rand(0, 3)}, "N, K >= 1"),
        ({"cluster_marginal": torch.tensor([0.5, 0.5])}, "shape"),
        ({"cluster_marginal": torch.tensor([0.5, 0.6, -0.1])}, "positive"),
        ({"cluster_marginal": torch.tensor([0.2, 0.2, 0.2])}, "sum to 1"),
        ({"lam": 0.0}, "lam > 0"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    args = {"probs": torch.rand(4, 3), **kwargs}
    with pytest.raises(ValueError, match=message):
        sinkhorn_knopp(args.pop("probs"), **args)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _distributed_worker(
    rank: int, port: int, probs: torch.Tensor, split: int, marginal: torch.Tensor, out_dir: str
) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    out = {}
    try:
        local = probs[:split] if rank == 0 else probs[split:]
        for chunk_size in (None, 16):
            out[chunk_size] = sinkhorn_knopp(
                local,
                cluster_marginal=marginal,
                tol=1e-8,
                return_plan=True,
                chunk_size=chunk_size,
                distributed=True,
            )
        if rank == 1:
            local = local.clone()
            local[0, 0] = float("nan")
        try:
            sinkhorn_knopp(local, distributed=True)
        except ValueError as exc:  # both processes must raise; neither may hang
            out["error"] = str(exc)
    finally:
        dist.destroy_process_group()
        torch.save(out, f"{out_dir}/rank{rank}.pt")


def test_distributed_two_gloo_processes_match_single_process(tmp_path):
    probs = random_probs(150, 6, seed=13).float()
    marginal = make_cluster_marginal(6, "gaussian", 0.3, torch.Generator().manual_seed(0))
    args = (_free_port(), probs, 61, marginal, str(tmp_path))
    mp.start_processes(_distributed_worker, args=args, nprocs=2, start_method="fork")
    out = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    for chunk_size in (None, 16):
        labels, plan = sinkhorn_knopp(
            probs, cluster_marginal=marginal, tol=1e-8, return_plan=True, chunk_size=chunk_size
        )
        assert torch.equal(torch.cat([out[0][chunk_size][0], out[1][chunk_size][0]]), labels)
        dist_plan = torch.cat([out[0][chunk_size][1], out[1][chunk_size][1]])
        torch.testing.assert_close(dist_plan, plan, rtol=1e-5, atol=1e-9)
    assert "NaN" in out[1]["error"] and "another process" in out[0]["error"]
