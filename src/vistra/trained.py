"""A trained model on disk, for every task: weights as vistra safetensors plus a description of how to use it.

`save_trained` writes FOLDER/model.safetensors, whose metadata holds {"task", "model", "info"} (info is the
JSON description: model_name, model_kwargs, classes, preprocessing, the task's recipe...), and a readable copy
of the description in FOLDER/model.json. `read_trained` finds the weights meant by a path (the file itself, or
model.safetensors / best.pt / last.pt in a run folder) and returns them with the description, taken from the
file's metadata or from the model.json beside it. `task_of` answers which task a checkpoint belongs to, so that
`vistra predict` can hand it to the right module. `final_weights` picks the weights a finished run should ship.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from vistra.atomic_io import write_json_atomic
from vistra.checkpoints.errors import CheckpointError

MODEL_FILE = "model.safetensors"
INFO_FILE = "model.json"
RUN_FILES = (MODEL_FILE, "best.pt", "last.pt")  # what a run folder may hold, in order of preference
TASKS = ("classify", "detect", "segment", "track")


def save_trained(model: torch.nn.Module | dict[str, torch.Tensor], folder: str | os.PathLike,
                 info: dict[str, Any]) -> Path:
    """Write folder/model.safetensors (weights + info in its metadata) and folder/model.json; returns the weights.

    info must hold "task" (one of TASKS) and "model_name"; everything in it must be JSON-serialisable.
    """
    from vistra.checkpoints.io import save_checkpoint

    if info.get("task") not in TASKS or not info.get("model_name"):
        raise ValueError(f"info needs a task in {TASKS} and a model_name, got {sorted(info)}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(info)
    path = save_checkpoint(model, folder / MODEL_FILE, model_name=info["model_name"],
                           metadata={"task": info["task"], "info": text})
    write_json_atomic(folder / INFO_FILE, info)
    return path


def find_weights(checkpoint: str | os.PathLike) -> Path:
    """The weights file meant by `checkpoint`: the file itself, or the best of RUN_FILES in a run folder."""
    path = Path(checkpoint)
    if path.is_dir():
        for name in RUN_FILES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: folder holds none of {', '.join(RUN_FILES)}")
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    return path


def read_metadata(weights: str | os.PathLike) -> dict[str, str]:
    """The string metadata in a safetensors file's header ({} for any other kind of file); tensors are not read."""
    weights = Path(weights)
    if weights.suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({' '.join(str(err).split())})") from None


def read_info(checkpoint: str | os.PathLike) -> tuple[Path, dict[str, Any] | None]:
    """checkpoint -> (weights file, its description or None when it has none), without reading the tensors.

    The description is the "info" entry of the file's metadata, else the model.json beside the file.
    """
    weights = find_weights(checkpoint)
    info = _info_from_metadata(weights, read_metadata(weights))
    if info is None:
        sidecar = weights.parent / INFO_FILE
        if sidecar.is_file():
            try:
                info = json.loads(sidecar.read_text())
            except json.JSONDecodeError as err:
                raise CheckpointError(f"{sidecar}: not valid JSON ({err})") from None
            if not isinstance(info, dict):
                raise CheckpointError(f"{sidecar}: model description is not a JSON object")
    return weights, info


def read_trained(checkpoint: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, Path]:
    """checkpoint -> (state dict, description or None, weights file). A training checkpoint (last.pt / best.pt)
    gives its EMA weights when it has them, else its model weights; any other file is read by
    vistra.checkpoints (safetensors, weights-only pickles, official training dicts)."""
    from vistra.checkpoints.io import read_checkpoint

    weights, info = read_info(checkpoint)
    if weights.suffix == ".pt":
        saved = _trainer_checkpoint(weights)
        if saved is not None:
            return trainer_weights(saved), info, weights
    state, _ = read_checkpoint(weights)
    return state, info, weights


def task_of(checkpoint: str | os.PathLike) -> str | None:
    """The task a checkpoint was trained for ("classify", "detect", ...), or None when it does not say.

    Looks at the description (metadata "info" or model.json), then at a bare "task" entry of the metadata.
    """
    weights, info = read_info(checkpoint)
    task = (info or {}).get("task") or read_metadata(weights).get("task")
    return task if task in TASKS else None


def final_weights(trainer: Any) -> dict[str, torch.Tensor]:
    """The weights a finished run ships: its best checkpoint's (EMA ones when EMA is on) when one was written,
    else the final ones (EMA when on)."""
    from vistra.engine.checkpoint_io import load_checkpoint

    if trainer.best_path.is_file():
        return trainer_weights(load_checkpoint(trainer.best_path))
    model = trainer.ema_model if trainer.ema_model is not None else trainer.model
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def trainer_weights(saved: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model weights of a Trainer checkpoint (last.pt / best.pt): the EMA copy's when EMA is on.

    best.pt holds the EMA weights under "ema"; last.pt holds the EMA's state {"module": weights, "decay", ...}.
    """
    ema = saved.get("ema")
    if isinstance(ema, dict) and isinstance(ema.get("module"), dict):  # last.pt
        return ema["module"]
    return ema if isinstance(ema, dict) and ema else saved["model"]


def _trainer_checkpoint(weights: Path) -> dict[str, Any] | None:
    """A Trainer checkpoint's content, or None when the .pt file is not one (official / foreign files)."""
    from vistra.engine.checkpoint_io import load_checkpoint
    from vistra.engine.trainer import CHECKPOINT_FORMAT

    try:
        saved = load_checkpoint(weights)
    except CheckpointError:  # refused by weights_only (e.g. a pickled argparse Namespace) or not a torch file
        return None
    return saved if saved.get("format") == CHECKPOINT_FORMAT and isinstance(saved.get("model"), dict) else None


def _info_from_metadata(weights: Path, metadata: dict[str, str]) -> dict[str, Any] | None:
    if "info" not in metadata:
        return None
    try:
        info = json.loads(metadata["info"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{weights}: unreadable model description in its metadata ({err})") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{weights}: model description in its metadata is not a JSON object")
    return info
