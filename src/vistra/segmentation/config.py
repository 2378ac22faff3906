"""The settings of a segmentation run: data, augmentation and evaluation (SegRecipe) plus the engine's TrainConfig.

Settings are one flat mapping, as given by `--set key=value`, a YAML file or a Python dict: SegRecipe fields,
TrainConfig fields (also as `train.<field>`) and `model.<option>` builder options (e.g. `model.fpn_channels`).
Values are converted to each field's type; an unknown key or a value of the wrong type raises ValueError
naming it.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vistra.config import set_key
from vistra.engine import TrainConfig

# Transformer segmentation defaults (SegFormer / PVT semantic FPN style): AdamW, small lr, head lr x10.
SEG_TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 6e-5, "weight_decay": 0.01, "batch_size": 16, "epochs": 32, "warmup_epochs": 1.0, "min_lr": 0.0,
    "best_metric": "mIoU", "out_dir": "runs/segment",
}


@dataclass
class SegRecipe:
    """Data, augmentation and evaluation settings of a run (the loop's own are in TrainConfig).

    num_classes None: the length of root/classes.txt, else the preset's default. img_size None: crop_size.
    scale / eval_scale: (long, short) edges the image is fitted into (eval_scale None: no resize at eval).
    eval_mode "whole" or "slide" (eval_crop default crop_size, eval_stride default 2/3 of it).
    head_lr_scale multiplies the learning rate of the head's parameters; layer_decay < 1: layer-wise lr decay
    inside the backbone. backbone_weights: a checkpoint loaded into the backbone before training. init_weights:
    a trained model to start from (tensors of matching name and shape load; the rest starts fresh).
    allow_outside_root: accept VOC split lists naming files outside the dataset folder.
    model_kwargs: options for the model builder (e.g. head channels); `model.<name>` keys in the settings.
    """

    num_classes: int | None = None
    img_size: int | None = None
    backbone_weights: str | None = None
    init_weights: str | None = None
    layout: str = "auto"
    reduce_zero_label: bool = False
    allow_outside_root: bool = False
    train_split: str = "train"
    val_split: str | None = "val"
    crop_size: int = 512
    scale: tuple[int, int] = (2048, 512)
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    photometric: bool = True
    eval_scale: tuple[int, int] | None = (2048, 512)
    eval_mode: str = "whole"
    eval_crop: int | None = None
    eval_stride: int | None = None
    head_lr_scale: float = 10.0
    layer_decay: float = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.eval_mode not in ("whole", "slide"):
            raise ValueError(f"eval_mode={self.eval_mode!r} must be 'whole' or 'slide'")
        if self.crop_size < 1:
            raise ValueError(f"crop_size={self.crop_size} must be >= 1")

    def window(self) -> tuple[int, int]:
        """(crop, stride) of sliding-window evaluation."""
        crop = self.eval_crop or self.crop_size
        return crop, self.eval_stride or max(1, crop * 2 // 3)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested sections -> dotted keys ({"train": {"lr": 1}} -> {"train.lr": 1}); model_kwargs stays a dict."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and key != "model_kwargs":
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resolve_config(settings: Mapping[str, Any] | None, out_dir: str | os.PathLike | None = None,
                   train: bool = True, source: str = "settings") -> tuple[SegRecipe, TrainConfig | None]:
    """Split flat (or nested) settings into a SegRecipe and a TrainConfig (over SEG_TRAIN_DEFAULTS).

    train=False accepts recipe and model keys only and returns (recipe, None). `source` names where the
    settings came from in error messages.
    """
    recipe = SegRecipe()
    train_values = dict(SEG_TRAIN_DEFAULTS)
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} if train else set()
    recipe_keys = {f.name for f in dataclasses.fields(SegRecipe)}
    model_kwargs = dict(recipe.model_kwargs)
    for key, value in flatten(settings or {}).items():
        name = key[len("train."):] if key.startswith("train.") else key
        if key.startswith("model."):
            model_kwargs[key[len("model."):]] = value
        elif key == "model_kwargs":
            model_kwargs.update(value or {})
        elif key in recipe_keys:
            recipe = set_key(recipe, key, value, source=source)
        elif name in train_keys:
            train_values[name] = value
        else:
            known = sorted(recipe_keys | train_keys)
            raise ValueError(f"{source}: unknown segmentation setting {key!r}; known: {', '.join(known)}, "
                             "and model.<option> for the model builder")
    recipe = dataclasses.replace(recipe, model_kwargs=model_kwargs)
    if not train:
        return recipe, None
    if out_dir is not None:
        train_values["out_dir"] = str(out_dir)
    cfg = TrainConfig()
    for key, value in train_values.items():
        cfg = set_key(cfg, key, value, source=source)
    return recipe, cfg


def recipe_dict(recipe: SegRecipe) -> dict[str, Any]:
    """The recipe as plain JSON types (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(recipe).items()}
