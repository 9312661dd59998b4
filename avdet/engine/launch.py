"""Start a function in N processes on this machine (detectron2's `launch`), or under torchrun.

- Under `torchrun` (RANK, WORLD_SIZE and LOCAL_RANK in the environment): initialise the process
  group from the environment and run the function once in this process.
- `num_processes == 1`: run the function here, without initialising torch.distributed.
- `num_processes > 1`: spawn that many processes, each joining one process group on a free local
  port ("nccl" when CUDA is available, one GPU per process; "gloo" on the CPU).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avdet.engine import comm

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def resolve_backend(backend: str = "auto") -> str:
    """ "auto" -> "nccl" when CUDA is available, else "gloo"."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    return backend


def launch(
    main_func: Callable[..., Any],
    num_processes: int = 1,
    args: Sequence[Any] = (),
    dist_url: str = "auto",
    backend: str = "auto",
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> Any:
    """Run `main_func(*args)` in `num_processes` processes (see module doc).

    `main_func` must be importable (a module-level function) when processes are spawned.
    `dist_url`: "auto" (a free port on 127.0.0.1) or e.g. "tcp://127.0.0.1:29500".
    Returns `main_func`'s result when it runs in this process, else None.
    """
    backend = resolve_backend(backend)
    if _under_torchrun():
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
        if num_processes not in (1, local_world):
            raise ValueError(
                f"--num-gpus {num_processes} under torchrun: torchrun starts the processes "
                "(--nproc-per-node); leave --num-gpus at 1"
            )
        return _run_in_group(
            main_func,
            args,
            backend,
            "env://",
            rank=int(os.environ["RANK"]),
            world_size=int(os.environ["WORLD_SIZE"]),
            local_rank=int(os.environ["LOCAL_RANK"]),
            timeout=timeout,
        )
    if num_processes < 1:
        raise ValueError(f"number of processes must be >= 1, got {num_processes}")
    if num_processes == 1:
        return main_func(*args)
    if backend == "nccl" and num_processes > torch.cuda.device_count():
        raise ValueError(
            f"{num_processes} processes need {num_processes} GPUs for NCCL; "
            f"{torch.cuda.device_count()} visible (use backend 'gloo' for CPU processes)"
        )
    if dist_url == "auto":
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    mp.start_processes(
        _spawned_worker,
        nprocs=num_processes,
        args=(main_func, args, backend, dist_url, num_processes, timeout),
        start_method="spawn",
        daemon=False,
    )
    return None


def _spawned_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    args: Sequence[Any],
    backend: str,
    dist_url: str,
    world_size: int,
    timeout: timedelta,
) -> None:
    _run_in_group(main_func, args, backend, dist_url, local_rank, world_size, local_rank, timeout)


def _run_in_group(
    main_func: Callable[..., Any],
    args: Sequence[Any],
    backend: str,
    init_method: str,
    rank: int,
    world_size: int,
    local_rank: int,
    timeout: timedelta,
) -> Any:
    """Join the process group, run `main_func(*args)`, leave the group."""
    comm.set_local_rank(local_rank)
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend, init_method=init_method, rank=rank, world_size=world_size, timeout=timeout
    )
    try:
        comm.synchronize()
        return main_func(*args)
    finally:
        dist.destroy_process_group()
