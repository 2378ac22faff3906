"""Starting a task model from another trained model: every tensor whose name and shape match is copied, the
rest (a classifier for another set of classes, a head the file lacks) keeps its initialisation and is listed.

    init = load_matching_weights(model, "runs/track-mot")      # a vistra run folder or weights file
    print(init.summary())   # initial weights: 212 of 214 tensors from ...; starting fresh: heads.hm.2.weight ...

This is how detectors are fine-tuned on new classes (the official DETR recipe drops class_embed the same way):
the file may be a vistra run folder or model file, an official DETR / Deformable DETR / TransCenter checkpoint
or a Hugging Face detector (converted to vistra names first), or any state dict in vistra's names.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vistra.checkpoints.convert import FORMATS, convert_state_dict, detect_format
from vistra.checkpoints.errors import CheckpointError
from vistra.checkpoints.io import read_checkpoint

_SKIPPED = ("num_batches_tracked",)


@dataclass
class WeightsInit:
    """What load_matching_weights did."""

    path: str
    format: str
    loaded: list[str] = field(default_factory=list)  # model tensors now holding the file's values
    fresh: list[str] = field(default_factory=list)  # model tensors kept as initialised: "name" or "name (shape)"
    unused: list[str] = field(default_factory=list)  # file tensors the model has no place for

    def summary(self) -> str:
        """One line for the console."""
        fresh = ", ".join(self.fresh[:8]) + (f" ... ({len(self.fresh)} in all)" if len(self.fresh) > 8 else "")
        unused = f"; {len(self.unused)} tensors of the file unused" if self.unused else ""
        return (f"initial weights: {len(self.loaded)} of {len(self.loaded) + len(self.fresh)} tensors from "
                f"{self.path} (format {self.format}); starting fresh: {fresh or 'nothing'}{unused}")

    def as_dict(self) -> dict:
        return {"file": self.path, "format": self.format, "loaded": len(self.loaded), "fresh": self.fresh,
                "unused": len(self.unused)}


def load_matching_weights(model: nn.Module, path: str | os.PathLike) -> WeightsInit:
    """Copy into `model` every tensor of the checkpoint at `path` (a file, or a run folder: its weights file)
    whose name and shape match; CheckpointError when none does."""
    from vistra.trained import find_weights

    weights = find_weights(path)
    state, _ = read_checkpoint(weights)
    fmt = detect_format(state)
    fmt = "vistra" if fmt == "unknown" else fmt  # names taken as they are
    if fmt in FORMATS and FORMATS[fmt][0] in ("detr", "deformable_detr", "transcenter"):
        state = convert_state_dict(state, None, fmt)  # official / Hugging Face names -> vistra's
    own = model.state_dict()
    loaded, fresh = [], []
    with torch.no_grad():
        for name, tensor in own.items():
            if name.endswith(_SKIPPED):
                continue
            other = state.get(name)
            if other is None:
                fresh.append(name)
            elif other.shape != tensor.shape:
                fresh.append(f"{name} (file {tuple(other.shape)}, model {tuple(tensor.shape)})")
            else:
                tensor.copy_(other.to(tensor.dtype))
                loaded.append(name)
    if not loaded:
        raise CheckpointError(f"{weights}: none of its {len(state)} tensors matches a tensor of "
                              f"{type(model).__name__} in name and shape (format {fmt})")
    unused = [k for k in state if k not in own]
    return WeightsInit(str(Path(weights)), fmt, loaded, fresh, unused)


def start_from(model: nn.Module, path: str | os.PathLike | None) -> dict | None:
    """load_matching_weights when a path is given, its summary printed once (by rank 0 under torchrun); returns
    the record for the run's info file, or None without a path."""
    if not path:
        return None
    init = load_matching_weights(model, path)
    if os.environ.get("RANK", "0") == "0":
        print(init.summary(), flush=True)
    return init.as_dict()
