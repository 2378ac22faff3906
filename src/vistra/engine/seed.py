"""Seeding and random-number-generator state for reproducible, resumable runs.

RNG states are stored as tensors and plain python types so a checkpoint holding them loads with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python `random`, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch), for the data order and worker seeds of an epoch."""
    mixed = np.random.SeedSequence([seed % 2**63, epoch]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator()
    generator.manual_seed(int(mixed))
    return generator


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed numpy and `random` in a worker from its torch seed.

    Torch seeds each worker from the loader's generator, so worker randomness follows (seed, epoch).
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def get_rng_state() -> dict[str, Any]:
    """Current states of torch (CPU, and CUDA if available), numpy and python `random`."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {
            "version": int(py_version),
            "state": torch.tensor(py_state, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by `get_rng_state` (CUDA states only when CUDA is available)."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].cpu().numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py_state = state["python"]
    random.setstate((py_state["version"], tuple(py_state["state"].tolist()), py_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            warnings.warn(
                f"CUDA RNG states of {len(cuda_states)} devices saved, {torch.cuda.device_count()} visible now: "
                "CUDA random streams are not restored",
                stacklevel=2,
            )
