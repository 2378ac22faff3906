"""Crash-safe writing and safe loading of training checkpoints.

A save either replaces the target file completely or leaves the previous file untouched: the data goes to
a temporary file in the same folder, is fsynced, and is then renamed over the target (`os.replace`).
Loading uses `torch.load(weights_only=True)`, so checkpoints must hold only tensors and plain python types.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _fsync_dir(folder: Path) -> None:
    """Persist a rename; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` to `path` atomically; on any error the previous file is kept and no temp file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Delete temp files that a killed `atomic_save(..., path)` left behind; returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f"{_temp_prefix(path)}*.tmp"))
    for temp in stale:
        temp.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `torch.load(weights_only=True)`; errors name the file and the cause."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise RuntimeError(
            f"{path} holds objects that torch.load(weights_only=True) refuses; vistra checkpoints "
            f"contain only tensors and plain python types ({err})"
        ) from err
    except (RuntimeError, EOFError) as err:
        raise RuntimeError(f"{path} could not be read as a torch checkpoint ({err})") from err
    if not isinstance(checkpoint, dict):
        raise RuntimeError(f"{path} holds a {type(checkpoint).__name__}, expected a dict checkpoint")
    return checkpoint
