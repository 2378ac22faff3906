"""Fine-tuning from pretrained backbones: load an ImageNet (or detector) checkpoint into a task model's backbone
only, and say what was loaded and what starts fresh.

    found = find_backbone(model)                       # ("backbone.body", the ResNet / PVT / ViT inside)
    load = load_backbone_weights(model, "pvt_v2_b2.pth")
    print(load.summary())                              # 392 tensors loaded into backbone.body ...; fresh: ...

Any format `load_pretrained` reads works: official PVT / PVTv2 files, timm and Hugging Face classifiers,
torchvision ResNets, the official DETR / Deformable DETR files and vistra's own trained task models (their
backbone part is taken). The file's classifier head is skipped; every backbone tensor must be in the file
(CheckpointError lists what is missing or of the wrong shape).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from vistra.checkpoints.convert import FORMATS, LoadReport, convert_state_dict, detect_format, load_pretrained
from vistra.checkpoints.errors import CheckpointError
from vistra.checkpoints.io import read_checkpoint

# Where vistra's task models keep their backbone network: detectors in backbone.body (torchvision / official
# DETR names), segmenters and trackers in backbone.model (a FeatureExtractor).
BACKBONE_PATHS = ("backbone.body", "backbone.model")
# Backbone prefixes inside whole-model files (converted to vistra names): vistra's own and the official DETR's.
_FILE_PREFIXES = ("backbone.body.", "backbone.model.", "backbone.0.body.")
_SKIPPED = ("num_batches_tracked",)


@dataclass
class BackboneLoad:
    """What load_backbone_weights did: which model tensors now hold the file's values, which start fresh."""

    path: str
    prefix: str  # the backbone's module path in the model, e.g. "backbone.body"
    report: LoadReport
    loaded: list[str] = field(default_factory=list)  # model parameter / buffer names (with prefix)
    fresh: list[str] = field(default_factory=list)  # top-level modules outside the backbone, kept as initialised

    def summary(self) -> str:
        """One line for the console and the run's info file."""
        head = f"; skipped the file's classifier ({', '.join(self.report.skipped_head)})" \
            if self.report.skipped_head else ""
        resized = f"; resized {', '.join(k for k, _, _ in self.report.resized)}" if self.report.resized else ""
        return (f"backbone weights: {len(self.loaded)} tensors from {self.path} (format {self.report.format}) "
                f"loaded into {self.prefix}{head}{resized}; starting fresh: {', '.join(self.fresh) or 'nothing'}")

    def as_dict(self) -> dict:
        return {"file": self.path, "format": self.report.format, "into": self.prefix, "loaded": len(self.loaded),
                "skipped_head": self.report.skipped_head, "fresh": self.fresh}


def find_backbone(model: nn.Module) -> tuple[str, nn.Module]:
    """(module path, module) of the backbone network inside a task model; ValueError when it has none."""
    for path in BACKBONE_PATHS:
        try:
            return path, model.get_submodule(path)
        except AttributeError:
            continue
    raise ValueError(f"{type(model).__name__} has no backbone network at {' or '.join(BACKBONE_PATHS)}")


def load_backbone_weights(model: nn.Module, path: str | os.PathLike) -> BackboneLoad:
    """Load the checkpoint at `path` into `model`'s backbone only (see the module doc); the rest is untouched."""
    prefix, backbone = find_backbone(model)
    state, _ = read_checkpoint(path)
    fmt = detect_format(state)
    if fmt in FORMATS and FORMATS[fmt][0] in ("detr", "deformable_detr", "transcenter"):
        state = convert_state_dict(state, None, fmt)  # -> vistra detector names: backbone.body.*
    state = _backbone_part(state)
    if not state:
        raise CheckpointError(f"{path}: holds no tensors to load into a backbone")
    report = load_pretrained(backbone, state, strict=True, skip_mismatched_head=True,
                             source=f"{path} (loaded into {prefix})")
    report.format = "vistra" if fmt == "unknown" else fmt  # unknown: names taken as they are
    missing = set(report.missing)
    loaded = [f"{prefix}.{k}" for k in backbone.state_dict() if k not in missing and not k.endswith(_SKIPPED)]
    top = prefix.split(".")[0]
    fresh = [name for name, _ in model.named_children() if name != top]
    fresh += [f"{top}.{name}" for name, child in model.get_submodule(top).named_children()
              if f"{top}.{name}" != prefix and any(p.numel() for p in child.parameters())]
    return BackboneLoad(str(Path(path)), prefix, report, loaded, fresh)


def fine_tune_from(model: nn.Module, path: str | os.PathLike | None) -> dict | None:
    """load_backbone_weights when a path is given, its summary printed once (by rank 0 under torchrun);
    returns the load's record for the run's info file, or None without a path."""
    if not path:
        return None
    load = load_backbone_weights(model, path)
    if os.environ.get("RANK", "0") == "0":
        print(load.summary(), flush=True)
    return load.as_dict()


def _backbone_part(state: dict) -> dict:
    """The backbone tensors of a whole-model state dict (prefix stripped), or the dict itself when it is a
    backbone / classifier file."""
    for prefix in _FILE_PREFIXES:
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if part:
            return part
    return state
