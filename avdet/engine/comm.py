"""Process-group helpers: rank, world size, barriers, gathers and reductions.

Every function works without `torch.distributed` being initialised (one process): then it is a
no-op or returns the single process's value, so library code calls them unconditionally.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

_LOCAL_RANK: int | None = None


def is_distributed() -> bool:
    """True when a process group is initialised (even one of size 1)."""
    return dist.is_available() and dist.is_initialized()


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_local_rank() -> int:
    """This process's index on its machine (its GPU): set by `launch`, or torchrun's LOCAL_RANK."""
    if _LOCAL_RANK is not None:
        return _LOCAL_RANK
    return int(os.environ.get("LOCAL_RANK", 0))


def set_local_rank(local_rank: int) -> None:
    """Record the local rank of a process started by `avdet.engine.launch`."""
    global _LOCAL_RANK
    _LOCAL_RANK = local_rank


def is_main_process() -> bool:
    return get_rank() == 0


def get_device(spec: str = "auto") -> torch.device:
    """The device named by cfg.DEVICE: "auto" = this process's GPU if CUDA is available, else CPU.

    "cuda" means this process's GPU (cuda:LOCAL_RANK); "cuda:N" and "cpu" are taken literally.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        return torch.device("cuda", get_local_rank())
    return torch.device(spec)


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU for NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def synchronize() -> None:
    """Barrier across all processes (no-op in one process)."""
    if get_world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


_OPS = {"sum": "SUM", "max": "MAX", "min": "MIN"}


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce `tensor` over processes with "sum", "mean", "max" or "min"; returns a new tensor.

    The input is left unchanged and the result is on the input's device.
    """
    if op not in (*_OPS, "mean"):
        raise ValueError(f"all_reduce op must be one of {[*_OPS, 'mean']}, got {op!r}")
    world = get_world_size()
    if world == 1:
        return tensor.clone()
    out = tensor.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out, op=getattr(dist.ReduceOp, _OPS.get(op, "SUM")))
    if op == "mean":
        out = out / world
    return out.to(tensor.device)


def all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's `tensor`, in rank order; the first dimension may differ between processes.

    Results are on the input's device. Trailing dimensions and dtype must agree across processes.
    """
    world = get_world_size()
    if world == 1:
        return [tensor]
    device = _comm_device()
    local = tensor.detach().to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64, device=device))
    lengths = [int(s.item()) for s in sizes]
    longest = max(lengths)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return [g[:n].to(tensor.device) for g, n in zip(gathered, lengths, strict=True)]


class _CatWithGrad(torch.autograd.Function):
    """Concatenation of every process's rows whose backward sums the processes' gradients.

    torch.distributed.nn's all_gather is not used: on gloo its backward allocates the received
    gradients with the strides of the local ones, so a non-contiguous gradient (pair_scores'
    einsum gives one) comes back scrambled.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        local = tensor.contiguous()
        parts = [torch.empty_like(local) for _ in range(get_world_size())]
        dist.all_gather(parts, local)
        ctx.rows = (get_rank() * len(local), (get_rank() + 1) * len(local))
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        total = grad.contiguous().clone()
        dist.all_reduce(total)
        return total[ctx.rows[0] : ctx.rows[1]]


def cat_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` concatenated along dim 0, differentiable (the identity alone).

    Each process's loss of the concatenation sends gradients to every process's rows; all
    processes must pass the same shape (a DistributedSampler's equal shares).
    """
    if get_world_size() == 1:
        return tensor
    sizes = all_gather(torch.tensor([tensor.shape[0]]))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"cat_with_grad needs equal rows in every process; got {sizes}")
    return _CatWithGrad.apply(tensor)


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's picklable `obj`, in rank order (`[obj]` in one process)."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from process `src`, on every process."""
    if get_world_size() == 1:
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def reduce_mean_dict(values: dict[str, float]) -> dict[str, float]:
    """Average scalar metrics over processes, key by key (keys present on some ranks only are
    averaged over the ranks that have them)."""
    if get_world_size() == 1:
        return dict(values)
    gathered = all_gather_object(values)
    keys = dict.fromkeys(k for d in gathered for k in d)
    return {k: sum(d[k] for d in gathered if k in d) / sum(k in d for d in gathered) for k in keys}
