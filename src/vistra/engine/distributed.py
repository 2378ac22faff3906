"""Distributed data-parallel context: process group from torchrun's environment, rank helpers, reductions.

Launched by torchrun (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR set), `setup()` joins the process group
(NCCL when CUDA is present, else gloo). Launched plainly it returns a single-process context and every helper
below is a no-op, so the same code runs everywhere.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank among world_size processes, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs, plots and progress bars."""
        return self.rank == 0


def setup(device_type: str = "cpu") -> DistContext:
    """Join the process group torchrun describes (once per process); a single-process context otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return context()


def context() -> DistContext:
    """The current process's context (single-process when no group is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def mean_over_processes(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average each value over all processes (identity when not distributed)."""
    ctx = context()
    if not ctx.enabled or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` from process `src` on every process (identity when not distributed)."""
    if not context().enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, on every process ([obj] when not distributed)."""
    ctx = context()
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if context().enabled:
        dist.barrier()
