"""Sinkhorn-Knopp self-labelling: avdet's solver next to POT, and its dense vs chunked memory.

  python benchmarks/sinkhorn.py [--tol 1e-2 ...] [--repeats 2] [--chunk-size 8192] [--threads 1]
                                [--no-pot] [--full]

Inputs are softmax outputs of random logits with cluster structure (a true cluster per row drawn
from an imbalanced distribution, +4 on its logit, N(0, 1) noise elsewhere), so equipartition has
to move many rows away from their first choice.

1. N = 200,000, K = 309 (VGGSound scale), lam = 20, uniform marginal: wall time of
   `sinkhorn_knopp` (dense float64 path, from the float32 probabilities to labels and plan)
   until its marginal error max_k |colsum_k / b_k - 1| < tol (each --tol); the same with plain
   Sinkhorn-Knopp (anderson_depth=0); and POT's `ot.sinkhorn` on the same problem (M = -log P,
   reg = 1 / lam, uniform a, b = marginal, float64 numpy) stopped at the first check where its
   own error ||colsum - b||_2 is at most the one avdet reached. Each solver's time is the best of
   --repeats runs. Labels are compared with the argmax of POT's plan and with a tightly converged
   solution (tol 1e-6), also for a sweep of tol values.
2. Peak working memory and time of the dense and chunked paths, each config in a fresh process:
   N = 200k and 1M with K = 309, and the chunked path at N = 1M, K = 1000 from a float16 input.
   `--full` adds N = 5M, K = 1000 (chunked, from a float16 numpy memmap, about 10 GB on disk).
   Peak memory is the largest anonymous resident memory (RssAnon, sampled every 2 ms) during the
   solve, minus the value before it, so the input itself is not counted.
Everything runs with --threads (default 1) torch and BLAS threads, POT included: on a shared,
busy machine OpenMP threads that wait for each other make the many mid-sized ops of the chunked
path up to 10x slower with 2 threads than with 1. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from avdet.selflabel.sinkhorn import sinkhorn_knopp

LAM = 20.0
BLOCK = 65_536  # rows generated at a time


def make_probs(out: torch.Tensor | np.ndarray, seed: int) -> None:
    """Fill out [N, K] with cluster-structured softmax probabilities, BLOCK rows at a time."""
    n, k = out.shape
    gen = torch.Generator().manual_seed(seed)
    prior = torch.softmax(torch.randn(k, generator=gen), 0)  # imbalanced true clusters
    for start in range(0, n, BLOCK):
        rows = min(BLOCK, n - start)
        logits = torch.randn(rows, k, generator=gen)
        logits[torch.arange(rows), torch.multinomial(prior, rows, True, generator=gen)] += 4.0
        block = torch.softmax(logits, 1)
        if isinstance(out, np.ndarray):
            out[start : start + rows] = block.numpy().astype(out.dtype)
        else:
            out[start : start + rows] = block


@contextmanager
def pass_counter() -> Iterator[list[int]]:
    """Collect the pass counts that sinkhorn_knopp logs at debug level."""
    passes: list[int] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "passes" in record.getMessage():
                passes.append(int(record.getMessage().split()[-2]))

    logger = logging.getLogger("avdet.selflabel.sinkhorn")
    handler, level = Handler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield passes
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def errors(plan_col_sums: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max relative, L2 absolute) deviation of a plan's column sums from the marginal."""
    return float(np.abs(plan_col_sums / b - 1).max()), float(np.linalg.norm(plan_col_sums - b))


def best_of(repeats: int, solve: Callable[[], dict]) -> dict:
    """The fastest of `repeats` runs (other jobs on a shared machine only ever add time)."""
    return min((solve() for _ in range(repeats)), key=lambda res: res["seconds"])


def timed_solve(probs: torch.Tensor, **kwargs) -> dict:
    """One sinkhorn_knopp call: labels, plan column sums, wall seconds and passes."""
    with pass_counter() as passes:
        start = time.perf_counter()
        labels, plan = sinkhorn_knopp(probs, lam=LAM, return_plan=True, **kwargs)
        seconds = time.perf_counter() - start
    return {
        "labels": labels.numpy(),
        "col": plan.double().sum(0).numpy(),
        "seconds": seconds,
        "passes": passes[-1] if passes else kwargs.get("max_iter", 2000),
    }


def timed_pot(probs: torch.Tensor, b: np.ndarray, stop: float) -> dict:
    """One `ot.sinkhorn` call on the same problem (cost -log P, reg 1 / lam), timed like ours."""
    import ot  # the `bench` extra

    n = len(probs)
    cost = -np.log(probs.double().numpy())
    start = time.perf_counter()
    plan, log = ot.sinkhorn(
        np.full(n, 1.0 / n), b, cost, 1.0 / LAM, stopThr=stop, numItermax=5000, log=True
    )
    seconds = time.perf_counter() - start
    return {
        "labels": plan.argmax(1),
        "col": plan.sum(0),
        "seconds": seconds,
        "passes": log["niter"] + 1,
    }


def compare_with_pot(
    probs: torch.Tensor, tol: float, tight: np.ndarray, use_pot: bool, repeats: int
) -> list[list[str]]:
    """Rows of the avdet-vs-POT table for one problem (best wall time of `repeats` runs)."""
    n, k = probs.shape
    b = np.full(k, 1.0 / k)
    ours = "avdet `sinkhorn_knopp` (Anderson mixing, default)"
    pot = "POT `ot.sinkhorn` (float64 numpy)"
    results = {
        ours: best_of(repeats, lambda: timed_solve(probs, tol=tol)),
        "avdet, plain Sinkhorn-Knopp (`anderson_depth=0`)": best_of(
            repeats, lambda: timed_solve(probs, tol=tol, anderson_depth=0)
        ),
    }
    if use_pot:
        stop = errors(results[ours]["col"], b)[1]
        results[pot] = best_of(repeats, lambda: timed_pot(probs, b, stop))
    rows = []
    for name, res in results.items():
        max_rel, l2 = errors(res["col"], b)
        rows.append(
            [
                f"{n:,} x {k}",
                name,
                f"{res['seconds']:.2f}",
                str(res["passes"]),
                f"{max_rel:.1e}",
                f"{l2:.1e}",
                f"{(res['labels'] == tight).mean():.4f}",
                f"{(res['labels'] == results[pot]['labels']).mean():.4f}" if use_pot else "n/a",
            ]
        )
    return rows


def tolerance_sweep(probs: torch.Tensor, tight: np.ndarray) -> list[list[str]]:
    """How the stopping tolerance trades passes for agreement with the converged labels."""
    rows = []
    for tol in (1e-1, 1e-2, 1e-3, 1e-4):
        res = timed_solve(probs, tol=tol)
        rows.append(
            [f"{tol:g}", str(res["passes"]), f"{res['seconds']:.2f}"]
            + [f"{(res['labels'] == tight).mean():.4f}"]
        )
    return rows


class PeakAnonMemory:
    """Largest RssAnon of this process (bytes), sampled by a thread every 2 ms."""

    def __enter__(self) -> PeakAnonMemory:
        self.baseline = self.peak = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.read())

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.read())

    @staticmethod
    def read() -> int:
        status = Path("/proc/self/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("RssAnon:"))
        return int(line.split()[1]) * 1024


def memory_worker(config: dict) -> dict:
    """Run one memory config in this (fresh) process; returns its measurements."""
    n, k, dtype = config["n"], config["k"], config["dtype"]
    if config.get("memmap"):
        path = Path(config["memmap"])
        probs = np.lib.format.open_memmap(path, "w+", np.float16, (n, k))
        make_probs(probs, seed=1)
        probs.flush()
        del probs
        probs = np.load(path, mmap_mode="r")
    else:
        probs = torch.empty(n, k, dtype=getattr(torch, dtype))
        make_probs(probs, seed=1)
    with pass_counter() as passes, PeakAnonMemory() as memory:
        start = time.perf_counter()
        sinkhorn_knopp(probs, lam=LAM, tol=config["tol"], chunk_size=config["chunk_size"])
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "passes": passes[-1],
        "peak_mb": (memory.peak - memory.baseline) / 2**20,
        "input_mb": n * k * np.dtype(dtype).itemsize / 2**20,
    }


def memory_table(args: argparse.Namespace) -> list[list[str]]:
    """Rows of the dense-vs-chunked table, one subprocess per config."""
    configs = [
        (200_000, 309, "float32", None),
        (200_000, 309, "float32", args.chunk_size),
        (1_000_000, 309, "float32", None),
        (1_000_000, 309, "float32", args.chunk_size),
        (1_000_000, 1000, "float16", args.chunk_size),
    ]
    if args.full:
        configs.append((5_000_000, 1000, "float16", args.chunk_size))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, k, dtype, chunk_size in configs:
            config = {"n": n, "k": k, "dtype": dtype, "chunk_size": chunk_size, "tol": args.tol[0]}
            if n >= 5_000_000:
                config["memmap"] = str(Path(tmp) / "probs.npy")
            command = [sys.executable, __file__, "--worker", json.dumps(config)]
            command += ["--threads", str(args.threads)] if args.threads else []
            result = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
            source = "float16 memmap" if config.get("memmap") else f"{dtype} tensor"
            rows.append(
                [
                    f"{n:,} x {k}",
                    "dense float64" if chunk_size is None else f"chunked ({chunk_size} rows)",
                    f"{source}, {result['input_mb']:,.0f} MB",
                    f"{result['peak_mb']:,.0f}",
                    f"{result['seconds']:.1f}",
                    str(result["passes"]),
                ]
            )
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    return rows


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--tol", type=float, nargs="+", default=[1e-2], help="marginal errors to reach (POT table)"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs per solver, best kept")
    parser.add_argument("--chunk-size", type=int, default=8192, help="rows per chunk")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch and BLAS threads (0: library defaults)"
    )
    parser.add_argument("--no-pot", action="store_true", help="skip POT (or when not installed)")
    parser.add_argument("--full", action="store_true", help="add N = 5M, K = 1000 (chunked)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    if args.worker:
        print(json.dumps(memory_worker(json.loads(args.worker))))
        return
    use_pot = not args.no_pot
    if use_pot:
        try:
            import ot  # noqa: F401
        except ImportError:
            print("POT is not installed (pip install 'avdet[bench]'): skipping it", file=sys.stderr)
            use_pot = False
    load = os.getloadavg()[0]
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads; load average {load:.1f} at the start.\n"
    )
    probs = torch.empty(200_000, 309)
    make_probs(probs, seed=0)
    tight = timed_solve(probs, tol=1e-6)["labels"]
    pot_rows = [
        [f"{tol:g}", *row]
        for tol in args.tol
        for row in compare_with_pot(probs, tol, tight, use_pot, args.repeats)
    ]
    print(f"### avdet vs POT, lam = {LAM:g}, uniform marginal\n")
    header = [
        "tol",
        "N x K",
        "solver",
        "wall s",
        "passes",
        "max rel. col. error",
        "L2 col. error",
        "labels = tight solution",
        "labels = POT's",
    ]
    print(markdown(header, pot_rows) + "\n", flush=True)
    print("### Stopping tolerance of `sinkhorn_knopp` (dense) on the same problem\n")
    header = ["tol", "passes", "wall s", "labels = tight solution (tol 1e-6)"]
    print(markdown(header, tolerance_sweep(probs, tight)) + "\n", flush=True)
    del probs
    mem_rows = memory_table(args)
    print(f"### Dense vs chunked, tol = {args.tol[0]:g}\n")
    header = ["N x K", "path", "input", "peak working MB", "wall s", "passes"]
    print(markdown(header, mem_rows))
    print(f"\nLoad average {os.getloadavg()[0]:.1f} at the end.")


if __name__ == "__main__":
    main()
