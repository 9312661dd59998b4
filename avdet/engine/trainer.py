"""The iteration-based training loop shared by every stage (detectron2's SimpleTrainer, resumable).

A stage gives a model, a map-style dataset and a loss function; the Trainer does the rest::

    def loss_fn(model, batch):                      # batch as collated, tensors on trainer.device
        out = model(batch["frame"], batch["audio"])
        return {"loss_nc": ..., "loss_clust": ..., "temperature": ...}

    trainer = Trainer(cfg, model, dataset, loss_fn, hooks=[MyHook()])
    trainer.train(resume=args.resume)               # runs to cfg.SOLVER.MAX_ITER

What it does, from cfg.SOLVER / DATALOADER / OUTPUT_DIR:
- Batches: an endless stream of seeded permutations of the dataset (one per "epoch"), split
  between processes like DistributedSampler; each process gets IMS_PER_BATCH / world_size items
  per iteration, and the processes together see exactly the batch one process would see.
- Each item is loaded with Python, NumPy-global and torch-CPU RNGs seeded from (SEED, position in
  the stream), so random augmentation depends neither on the process, the DataLoader worker, nor
  on whether the run was resumed.
- Optimiser and schedule (`solver.py`), AMP on CUDA (SOLVER.AMP), gradient clipping
  (SOLVER.CLIP_GRAD_NORM), DistributedDataParallel when world_size > 1.
- The entries of the loss dict whose names start with "loss" are summed and back-propagated; the
  other (scalar) entries are only logged. A NaN/inf loss stops training with NonFiniteLossError
  naming the iteration and the terms; no checkpoint of that state is written.
- Checkpoints (`checkpoint.py`) every CHECKPOINT_PERIOD iterations and `model_final.pth` at the
  end, with model, optimiser, scheduler, AMP scaler, iteration, sampler position, hook states,
  and every process's RNG states and not yet logged metrics. `train(resume=True)` continues
  from `last_checkpoint` and ends with the same weights and metrics.json lines as an
  uninterrupted run (bitwise on the CPU, also with DataLoader workers).
- metrics.json every LOG_PERIOD iterations (loss means over the window, averaged over
  processes; lr; seconds per iteration; eta), a tqdm bar and log lines on rank 0.

Stateful stages use hooks (`HookBase`): e.g. pseudo-labels live in a hook whose `state_dict`
goes into the checkpoint. Look such per-sample state up in the main process (in `loss_fn`, by an
"index" the dataset puts in each item), not inside the dataset: DataLoader workers hold copies of
the dataset made when training starts. A loss that needs the iteration can itself be a hook,
passed both as `loss_fn` and in `hooks`, reading `trainer.iter` in `before_step`. Hooks add
their own lines to metrics.json with `trainer.log_metrics(name=value, ...)`.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info
from tqdm import tqdm

from avdet.config import CfgNode, save_config
from avdet.engine import comm
from avdet.engine.checkpoint import Checkpointer, CheckpointError, load_model_state, load_weights
from avdet.engine.logger import MetricsWriter
from avdet.engine.solver import build_lr_scheduler, build_optimizer
from avdet.utils.seed import (
    derive_seed,
    get_rng_state,
    seed_cpu_rngs,
    seeded_rng,
    set_rng_state,
)

logger = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor | float]]

# Distinct first keys of derive_seed for the different uses of cfg.SEED.
_SEED_PERMUTATION, _SEED_SAMPLE, _SEED_LOADER = 1, 2, 3
_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "iteration", "sampler")


class NonFiniteLossError(FloatingPointError):
    """A loss, gradient norm or parameter became NaN/inf; training stopped without saving it."""


class HookBase:
    """Extension points of `Trainer.train`; override what you need.

    Order per iteration: every hook's `before_step`, the step, every hook's `after_step`, then the
    trainer's own metrics and checkpoint. `before_train` runs after a resume has restored the
    model, optimiser and hook states (`trainer.start_iter > 0` then); `after_train` runs only when
    MAX_ITER is reached. Hooks run on every process.
    """

    def before_train(self, trainer: Trainer) -> None:
        pass

    def before_step(self, trainer: Trainer) -> None:
        pass

    def after_step(self, trainer: Trainer) -> None:
        pass

    def after_train(self, trainer: Trainer) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint: tensors, numbers, strings, lists and dicts only (weights_only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class EvalHook(HookBase):
    """Runs `eval_fn()` every `period` iterations (0 = not during training) and after training.

    `eval_fn` returns a flat dict; its numbers are appended to metrics.json at that iteration.
    """

    def __init__(self, period: int, eval_fn: Callable[[], Mapping[str, Any]]) -> None:
        self.period = period
        self.eval_fn = eval_fn

    def _evaluate(self, trainer: Trainer) -> None:
        results = self.eval_fn()
        trainer.model.train()
        scalars = {k: v for k, v in results.items() if isinstance(v, int | float)}
        if scalars:
            trainer.log_metrics(**scalars)

    def after_step(self, trainer: Trainer) -> None:
        done = trainer.iter + 1
        if self.period and done % self.period == 0 and done != trainer.max_iter:
            self._evaluate(trainer)

    def after_train(self, trainer: Trainer) -> None:
        self._evaluate(trainer)


class TrainingSampler(Sampler[list[tuple[int, int]]]):
    """Endless per-process batches of (dataset index, sample seed) from a global sample stream.

    The stream is the concatenation of permutations of range(size), the one of epoch e drawn with
    a torch.Generator seeded by (seed, e); the item at offset o of epoch e gets the sample seed
    derive_seed(seed, e) + o. Process r of W takes stream positions r, r + W, ...,
    so one iteration of all processes covers `batch_size * W` consecutive positions: the same
    items as one process with the global batch. `start` is the stream position to begin at
    (samples already consumed by all processes), which makes the sampler resumable.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        if size <= 0:
            raise ValueError("the training dataset is empty")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(derive_seed(_SEED_PERMUTATION, self.seed, epoch))
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        position = self.start + self.rank
        epoch, order, base = -1, [], 0
        batch = []
        while True:
            this_epoch, offset = divmod(position, self.size)
            if this_epoch != epoch:
                epoch, order = this_epoch, self.permutation(this_epoch)
                base = derive_seed(_SEED_SAMPLE, self.seed, epoch)
            # consecutive seeds, as PyTorch gives its workers: independent streams for MT19937
            batch.append((order[offset], (base + offset) % 2**63))
            position += self.world_size
            if len(batch) == self.batch_size:
                yield batch
                batch = []


class _SeededDataset(Dataset):
    """Loads `dataset[index]` with the RNGs seeded by the sample seed the sampler drew."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        if get_worker_info() is not None:  # a worker's RNGs serve only its samples: no restore
            seed_cpu_rngs(seed)
            return self.dataset[index]
        with seeded_rng(seed):  # main process: leave the training step's RNG streams untouched
            return self.dataset[index]


def per_process_batch_size(global_batch: int, world_size: int) -> int:
    """IMS_PER_BATCH / world_size; an error unless it divides evenly."""
    if global_batch <= 0 or global_batch % world_size:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH ({global_batch}) must be a positive multiple of the number of "
            f"processes ({world_size})"
        )
    return global_batch // world_size


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Tensors in nested dicts, lists and tuples moved to `device`; everything else unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device) for v in batch))
    if isinstance(batch, list | tuple):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def _hook_keys(hooks: Sequence[HookBase]) -> list[str]:
    """Checkpoint keys of the hooks: class name, with "_2", "_3", ... for repeats."""
    keys, counts = [], {}
    for hook in hooks:
        name = type(hook).__name__
        counts[name] = counts.get(name, 0) + 1
        keys.append(name if counts[name] == 1 else f"{name}_{counts[name]}")
    return keys


class Trainer:
    """Trains `model` on `train_dataset` by minimising `loss_fn(model, batch)` (see module doc).

    Args:
        cfg: the run's config (SEED, DEVICE, OUTPUT_DIR, SOLVER.*, DATALOADER.NUM_WORKERS,
            MODEL.WEIGHTS).
        model: moved to cfg.DEVICE here; `trainer.model` is always this unwrapped module.
        train_dataset: map-style; items are collated by `collate_fn` (default_collate).
        loss_fn: `(model, batch) -> {name: scalar}`. `model` is `trainer.train_model`, a
            DistributedDataParallel wrapper with several processes: call its forward only.
        hooks: `HookBase` instances, called in order.
        optimizer, scheduler: override `build_optimizer` / `build_lr_scheduler` (stepped per
            iteration).
        find_unused_parameters: passed to DistributedDataParallel (parameters that get no
            gradient at some iterations, e.g. heads whose loss starts later).

    Attributes a hook may read: `iter` (current 0-based iteration), `start_iter`, `max_iter`,
    `model`, `optimizer`, `scheduler`, `device`, `batch_size` (per process), `cfg`.
    """

    def __init__(
        self,
        cfg: CfgNode,
        model: nn.Module,
        train_dataset: Dataset,
        loss_fn: LossFn,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        hooks: Sequence[HookBase] = (),
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        find_unused_parameters: bool = False,
    ) -> None:
        self.cfg = cfg
        self.device = comm.get_device(cfg.DEVICE)
        self.model = model.to(self.device)
        self.train_model: nn.Module = self.model
        self.dataset = train_dataset
        self.loss_fn = loss_fn
        self.collate_fn = collate_fn or default_collate
        self.hooks = list(hooks)
        self.optimizer = optimizer or build_optimizer(cfg, self.model)
        self.scheduler = scheduler or build_lr_scheduler(cfg, self.optimizer)
        self.amp = bool(cfg.SOLVER.AMP) and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.find_unused_parameters = find_unused_parameters

        self.world_size = comm.get_world_size()
        self.batch_size = per_process_batch_size(cfg.SOLVER.IMS_PER_BATCH, self.world_size)
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.iter = self.start_iter = 0
        self.samples_seen = 0  # position in the global sample stream (all processes together)
        self.data_seed = cfg.SEED

        self.checkpointer = Checkpointer(cfg.OUTPUT_DIR, save_to_disk=comm.is_main_process())
        self.writer = MetricsWriter(cfg.OUTPUT_DIR, enabled=comm.is_main_process())
        self._window: dict[str, list[float]] = {}
        self._resume_rng: dict | None = None
        self._last_saved = "none"
        self._lr = self.optimizer.param_groups[0]["lr"]

    # -- public API ------------------------------------------------------------------------
    def train(self, resume: bool = False, stop_at: int | None = None) -> None:
        """Train from iteration 0, or from `last_checkpoint` when `resume` and one exists.

        Without a checkpoint to resume, cfg.MODEL.WEIGHTS (if set) initialises the model.
        `stop_at`: stop after this many iterations in total and save a checkpoint there, as a
        pre-empted job would (for tests and for splitting a run); `after_train` is not called.
        """
        end = self.max_iter if stop_at is None else stop_at
        if not 0 < end <= self.max_iter:
            raise ValueError(f"stop_at must be in [1, MAX_ITER={self.max_iter}], got {stop_at}")
        self.resume_or_load(resume)
        if comm.is_main_process():
            save_config(self.cfg)
        self._wrap_for_distributed()
        self.model.train()
        for hook in self.hooks:
            hook.before_train(self)
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
        logger.info(
            "training from iteration %d to %d: %d process(es) x batch %d, device %s, AMP %s",
            self.start_iter, end, self.world_size, self.batch_size, self.device, self.amp,
        )  # fmt: skip
        if self.start_iter >= end:
            logger.info("nothing to train: the checkpoint is at iteration %d", self.start_iter)
        data_iter = iter(self._build_data_loader())
        bar = tqdm(
            total=self.max_iter,
            initial=self.start_iter,
            desc="train",
            unit="it",
            dynamic_ncols=True,
            disable=not comm.is_main_process(),
        )
        try:
            for iteration in range(self.start_iter, end):
                self.iter = iteration
                for hook in self.hooks:
                    hook.before_step(self)
                total = self.run_step(data_iter)
                for hook in self.hooks:
                    hook.after_step(self)
                self._write_metrics()
                self._checkpoint(end)
                bar.set_postfix(loss=f"{total:.4g}", refresh=False)
                bar.update(1)
        finally:
            bar.close()
            del data_iter  # shuts down DataLoader workers
        if end == self.max_iter:
            for hook in self.hooks:
                hook.after_train(self)
        self.writer.close()

    def resume_or_load(self, resume: bool) -> None:
        """Restore the full state from `last_checkpoint` (resume), else load cfg.MODEL.WEIGHTS."""
        path = self.checkpointer.get_checkpoint_file() if resume else None
        path = comm.broadcast_object(path)  # every process resumes from what rank 0 found
        if path is None:
            if resume:
                logger.info("no checkpoint in %s; training from scratch", self.cfg.OUTPUT_DIR)
            if self.cfg.MODEL.WEIGHTS:
                load_weights(self.model, self.cfg.MODEL.WEIGHTS)
                logger.info("initialised the model from %s", self.cfg.MODEL.WEIGHTS)
            return
        self.load_training_state(self.checkpointer.load(path), source=str(path))
        self.writer.discard_from(self.start_iter)
        logger.info("resumed from %s at iteration %d", path, self.start_iter)

    def load_training_state(self, state: dict[str, Any], source: str) -> None:
        """Restore model, optimiser, scheduler, scaler, iteration, sampler, hooks and RNG."""
        absent = [k for k in _CHECKPOINT_KEYS if k not in state]
        if absent:
            raise CheckpointError(f"{source}: not a training checkpoint; it lacks {absent}")
        load_model_state(self.model, state["model"], source=source)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.amp and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_iter = int(state["iteration"]) + 1
        sampler = state["sampler"]
        if sampler["dataset_size"] != len(self.dataset):
            logger.warning(
                "%s: the training set had %d items, now %d; the sample order differs from the "
                "interrupted run", source, sampler["dataset_size"], len(self.dataset),
            )  # fmt: skip
        self.data_seed = int(sampler["seed"])
        self.samples_seen = int(sampler["epoch"]) * len(self.dataset) + int(sampler["offset"])
        hook_states = state.get("hooks", {})
        for key, hook in zip(_hook_keys(self.hooks), self.hooks, strict=True):
            if key in hook_states:
                hook.load_state_dict(hook_states[key])
            elif hook.state_dict():
                logger.warning("%s: no state for hook %s; it starts afresh", source, key)
        processes = state.get("processes", [])
        if len(processes) == self.world_size:
            mine = processes[comm.get_rank()]
            self._resume_rng = mine["rng"]
            self._window = {k: list(v) for k, v in mine["metrics_window"].items()}
        else:
            logger.warning(
                "%s: saved by %d process(es), running %d; random streams differ from the "
                "interrupted run", source, len(processes), self.world_size,
            )  # fmt: skip

    def log_metrics(self, **scalars: float) -> None:
        """Append `{"iteration": trainer.iter, **scalars}` to metrics.json now (rank 0 writes)."""
        self.writer.write({"iteration": self.iter, **scalars})

    # -- one iteration ---------------------------------------------------------------------
    def run_step(self, data_iter: Iterator[Any]) -> float:
        """Load a batch, forward, check, backward, clip, step; returns the total loss."""
        start = time.perf_counter()
        batch = move_to_device(next(data_iter), self.device)
        data_time = time.perf_counter() - start
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            loss_dict = self.loss_fn(self.train_model, batch)
        losses = {k: v for k, v in loss_dict.items() if k.startswith("loss")}
        if not losses or not all(isinstance(v, torch.Tensor) for v in losses.values()):
            raise ValueError(
                f"loss_fn must return at least one tensor named 'loss*'; got {sorted(loss_dict)}"
            )
        total = sum(losses.values())
        values = {k: _scalar(k, v) for k, v in loss_dict.items()}
        total_value = float(total.detach())
        self._check_finite(values, total_value)

        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.SOLVER.CLIP_GRAD_NORM > 0:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(
                self.model.parameters(), self.cfg.SOLVER.CLIP_GRAD_NORM
            )
            if not self.amp and not math.isfinite(norm):  # AMP skips such steps by design
                raise NonFiniteLossError(
                    f"iteration {self.iter}: gradient norm is {norm}; stopped without saving "
                    f"(last checkpoint: {self._last_saved})"
                )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.iter == self.start_iter:
            # The schedule counts iterations, so it moves on when AMP's scaler skips an
            # overflowing step (the first ones on a GPU), which torch warns of, on a scheduler's
            # first step only, as a misuse.
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", "Detected call of `lr_scheduler.step", UserWarning
                )
                self.scheduler.step()
        else:
            self.scheduler.step()
        self.samples_seen += self.batch_size * self.world_size

        values.update(total_loss=total_value, time=time.perf_counter() - start)
        values["data_time"] = data_time
        for key, value in values.items():
            self._window.setdefault(key, []).append(value)
        self._lr = lr
        return total_value

    def _check_finite(self, values: dict[str, float], total: float) -> None:
        bad = not math.isfinite(total)
        if self.world_size > 1:  # every process must stop, or the others hang in backward
            bad = bool(comm.all_reduce(torch.tensor([float(bad)]), "max").item())
        if bad:
            terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"iteration {self.iter}: non-finite loss on at least one process "
                f"(this process: total={total:.6g}, {terms}); stopped without saving this state "
                f"(last checkpoint: {self._last_saved})"
            )

    # -- metrics and checkpoints -----------------------------------------------------------
    def _write_metrics(self) -> None:
        """Every LOG_PERIOD iterations and at MAX_ITER. A run stopped in between keeps its partial
        window in the checkpoint, so a resumed run writes the same lines as an uninterrupted one."""
        done = self.iter + 1
        if done % self.cfg.SOLVER.LOG_PERIOD and done != self.max_iter:
            return
        means = comm.reduce_mean_dict({k: sum(v) / len(v) for k, v in self._window.items()})
        self._window.clear()
        eta = means["time"] * (self.max_iter - done)
        record = {"iteration": self.iter, **means, "lr": self._lr, "eta_seconds": eta}
        self.writer.write(record)
        losses = "  ".join(
            f"{k}: {v:.4g}" for k, v in means.items() if k not in ("time", "data_time")
        )
        logger.info(
            "iter: %d/%d  %s  lr: %.4g  time: %.4f  data_time: %.4f  eta: %s",
            done, self.max_iter, losses, self._lr, means["time"], means["data_time"],
            timedelta(seconds=round(eta)),
        )  # fmt: skip

    def _checkpoint(self, end: int) -> None:
        done = self.iter + 1
        if done == self.max_iter:
            self.save("model_final")
        elif done == end or done % self.cfg.SOLVER.CHECKPOINT_PERIOD == 0:
            self.save(f"model_{self.iter:07d}")

    def save(self, name: str) -> None:
        """Checkpoint the state after iteration `self.iter` as OUTPUT_DIR/<name>.pth.

        Collective: every process calls it (their RNG states are gathered); rank 0 writes.
        """
        for key, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NonFiniteLossError(
                    f"iteration {self.iter}: parameter {key} is not finite; {name}.pth not written "
                    f"(last checkpoint: {self._last_saved})"
                )
        epoch, offset = divmod(self.samples_seen, len(self.dataset))
        self.checkpointer.save(
            name,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(),
            iteration=self.iter,
            sampler={
                "seed": self.data_seed,
                "dataset_size": len(self.dataset),
                "epoch": epoch,
                "offset": offset,
            },
            hooks={
                k: h.state_dict() for k, h in zip(_hook_keys(self.hooks), self.hooks, strict=True)
            },
            processes=comm.all_gather_object(
                {"rng": get_rng_state(), "metrics_window": self._window}
            ),
            config=self.cfg.dump(),
        )
        self._last_saved = f"{name}.pth"
        comm.synchronize()  # no process may look for this checkpoint before it exists

    # -- setup -----------------------------------------------------------------------------
    def _wrap_for_distributed(self) -> None:
        if self.world_size > 1 and not isinstance(self.train_model, DistributedDataParallel):
            self.train_model = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters,
            )

    def _build_data_loader(self) -> DataLoader:
        sampler = TrainingSampler(
            len(self.dataset),
            self.batch_size,
            seed=self.data_seed,
            rank=comm.get_rank(),
            world_size=self.world_size,
            start=self.samples_seen,
        )
        # An explicit generator keeps DataLoader from drawing its base seed from the global RNG.
        generator = torch.Generator().manual_seed(
            derive_seed(_SEED_LOADER, self.data_seed, comm.get_rank())
        )
        return DataLoader(
            _SeededDataset(self.dataset),
            batch_sampler=sampler,
            num_workers=self.cfg.DATALOADER.NUM_WORKERS,
            collate_fn=self.collate_fn,
            pin_memory=self.device.type == "cuda",
            generator=generator,
        )


def _scalar(name: str, value: torch.Tensor | float) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"loss_fn entry {name!r} must be a scalar, got shape {tuple(value.shape)}"
            )
        return float(value.detach())
    return float(value)
