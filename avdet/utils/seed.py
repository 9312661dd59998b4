"""Seeding and RNG state: seed every generator, derive sub-seeds, save and restore RNG state.

The saved state holds only tensors, numbers and lists, so it goes into a checkpoint that
`torch.load(..., weights_only=True)` reads back (no pickled NumPy objects).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed Python's `random`, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integer keys, e.g. `derive_seed(SEED, epoch)`.

    Why not `SEED + epoch`: neighbouring sums collide ((0, 1) and (1, 0)); SeedSequence hashes the
    whole tuple. Callers put a distinct constant first to separate uses of the same keys.
    """
    state = np.random.SeedSequence([int(k) % 2**64 for k in keys]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & (2**63 - 1))


def get_rng_state() -> dict:
    """Python, NumPy-global, torch CPU (and CUDA, when initialised) RNG states, weights_only-safe."""
    version, mt_state, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(mt_state), "gauss_next": gauss_next},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `get_rng_state` returned (CUDA states only when CUDA is in use here too)."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def seed_cpu_rngs(seed: int) -> None:
    """Seed Python's `random`, NumPy's global RNG and torch's CPU generator (not CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with the CPU RNGs seeded (`seed_cpu_rngs`); restore their states afterwards.

    Used per data sample so augmentation depends on (seed, sample position) only, not on which
    process or worker draws it, nor on how many samples that worker drew before.
    """
    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_cpu_rngs(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
