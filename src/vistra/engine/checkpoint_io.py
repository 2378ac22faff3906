"""Crash-safe writing and safe loading of training checkpoints.

A save either replaces the target file completely or leaves the previous file untouched (see vistra.atomic_io).
Loading uses `torch.load(weights_only=True)`, so checkpoints must hold only tensors and plain python types, and
a file that would run code when unpickled is refused without running it. Every loading failure is a
CheckpointError naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from vistra.atomic_io import atomic_path, remove_stale_temp_files
from vistra.checkpoints.errors import CheckpointError

__all__ = ["atomic_save", "load_checkpoint", "remove_stale_temp_files"]


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` to `path` atomically; on any error the previous file is kept and no temp file is left."""
    with atomic_path(path) as temp:
        torch.save(obj, temp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict with `torch.load(weights_only=True)`.

    Raises:
        CheckpointError: ``"<path>: <problem>"`` for a missing, truncated or corrupt file, one holding objects
            other than tensors and plain python types (never unpickled), or one that is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"{path}: holds objects that torch.load(weights_only=True) refuses to build (nothing from the file "
            f"was run); vistra checkpoints contain only tensors and plain python types ({detail})"
        ) from None
    except Exception as err:  # noqa: BLE001  (a damaged file makes the reader fail in many ways)
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__}: {first})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, expected a dict checkpoint")
    return checkpoint
