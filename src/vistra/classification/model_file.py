"""A trained classifier on disk: vistra.trained's model.safetensors + model.json, described by ClassifierInfo.

`save_classifier` writes the weights with the description {"task": "classify", "model_name", "model_kwargs",
"classes", "img_size", "mean", "std", "crop_pct", "interpolation"}. `load_classifier` reads it back from the
file, a run folder or a training checkpoint (last.pt / best.pt, EMA weights when present); it also takes a
foreign checkpoint (timm, Hugging Face, official, `vistra convert` output) together with a model name.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vistra.checkpoints.errors import CheckpointError

TASK = "classify"

@dataclass
class ClassifierInfo:
    """How to rebuild and feed a trained classifier."""

    model_name: str
    classes: list[str]
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # create_model overrides (num_classes, img_size, ...)
    img_size: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def to_json(self) -> dict[str, Any]:
        return {"task": TASK, **asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str | os.PathLike) -> ClassifierInfo:
        try:
            return cls(
                model_name=str(data["model_name"]),
                classes=[str(c) for c in data["classes"]],
                model_kwargs=dict(data.get("model_kwargs") or {}),
                img_size=int(data.get("img_size", 224)),
                mean=tuple(float(v) for v in data.get("mean", cls.mean)),
                std=tuple(float(v) for v in data.get("std", cls.std)),
                crop_pct=float(data.get("crop_pct", 0.875)),
                interpolation=str(data.get("interpolation", "bicubic")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: classifier description is incomplete or invalid ({err!r})") from None

    def build_eval_transform(self):
        """PIL image -> (3, img_size, img_size) float tensor, as used for validation during training."""
        from vistra.data.cls_transforms import build_eval_transform

        return build_eval_transform(self.img_size, crop_pct=self.crop_pct, mean=self.mean, std=self.std,
                                    interpolation=self.interpolation)


def save_classifier(model, folder: str | os.PathLike, info: ClassifierInfo) -> Path:
    """Write folder/model.safetensors (weights + description) and folder/model.json; returns the weights path.

    `model` is a module or a state dict (e.g. vistra.trained.final_weights of a run).
    """
    from vistra.trained import save_trained

    return save_trained(model, folder, info.to_json())


def load_classifier(checkpoint: str | os.PathLike, model_name: str | None = None):
    """checkpoint -> (model in eval mode on the CPU, ClassifierInfo). `model_name` overrides the stored name.

    Raises CheckpointError naming the file when it is missing, unreadable, holds another task's model, does
    not say which model it holds (pass model_name), or does not fit the model.
    """
    import vistra.classification.presets  # noqa: F401  (registers the demo presets)
    from vistra.checkpoints import convert_state_dict, load_pretrained
    from vistra.trained import read_metadata, read_trained

    state, described, weights = read_trained(checkpoint)
    if described is not None and described.get("task", TASK) != TASK:
        raise CheckpointError(f"{weights}: holds a {described['task']} model, not a classifier")
    if described is not None:
        info = ClassifierInfo.from_json(described, weights)
        if model_name and model_name != info.model_name:  # another architecture: only the class count carries over
            info.model_name, info.model_kwargs = model_name, {"num_classes": len(info.classes)}
        model = _build(info.model_name, info.model_kwargs, weights)
    else:  # a foreign or bare checkpoint: the caller names the model, the head gives the class count
        name = model_name or read_metadata(weights).get("model")
        if not name:
            raise CheckpointError(f"{weights}: does not say which model it holds; pass --model NAME")
        head = convert_state_dict(state).get("head.weight")  # (num_classes, D) in vistra's names
        kwargs = {"num_classes": int(head.shape[0])} if head is not None else {}
        model = _build(name, kwargs, weights)
        img_size = int(getattr(getattr(model, "config", None), "img_size", 224))
        classes = [str(i) for i in range(int(getattr(model, "num_classes", 0)))]
        info = ClassifierInfo(model_name=name, classes=classes, model_kwargs=kwargs, img_size=img_size)
    try:
        load_pretrained(model, state)  # converts foreign keys; CheckpointError lists what does not fit
    except CheckpointError as err:
        raise CheckpointError(str(err).replace("<state dict>", str(weights), 1)) from None
    return model.eval(), info


def _build(name: str, kwargs: dict[str, Any], weights: Path):
    """create_model(name, **kwargs); arguments the model does not take are the checkpoint's problem."""
    from vistra.registry import create_model

    try:
        return create_model(name, **kwargs)
    except TypeError as err:
        raise CheckpointError(f"{weights}: cannot build {name} with {kwargs} ({err})") from None
