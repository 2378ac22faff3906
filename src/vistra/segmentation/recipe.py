"""Train a semantic segmentation model with the shared engine (`vistra train segment`).

A run folder holds the engine's files (config.yaml, metrics.jsonl, last.pt, best.pt), run_config.yaml (the
resolved settings) and, when training ends, model.safetensors + model.json written by `vistra.trained`
(task "segment", model name and options, classes, recipe), which `vistra eval segment` and `vistra predict`
take.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from vistra.atomic_io import write_text_atomic
from vistra.checkpoints.backbone import find_backbone, fine_tune_from
from vistra.checkpoints.init_weights import start_from
from vistra.data.seg_dataset import IGNORE_INDEX, SegmentationDataset, read_class_names
from vistra.data.seg_transforms import build_seg_eval_transform, build_seg_train_transform
from vistra.engine import Trainer, build_param_groups
from vistra.engine.optim import backbone_lr_scales
from vistra.registry import create_model
from vistra.segmentation.config import SegRecipe, recipe_dict, resolve_config
from vistra.segmentation.evaluate import evaluate, scalars
from vistra.segmentation.model import Segmenter
from vistra.trained import final_weights, save_trained

RUN_CONFIG = "run_config.yaml"


def build_model(model_name: str, recipe: SegRecipe, classes: Sequence[str] | None) -> tuple[Segmenter, dict]:
    """The segmentation model `model_name` for `recipe`; returns it and the kwargs that rebuild it."""
    kwargs = dict(recipe.model_kwargs)
    num_classes = recipe.num_classes or (len(classes) if classes else None)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    kwargs["img_size"] = recipe.img_size or recipe.crop_size
    from vistra.registry import get_builder

    get_builder(model_name)  # an unknown name fails here, before any option is blamed
    try:
        model = create_model(model_name, **kwargs)
    except TypeError as err:
        raise ValueError(f"{model_name}: {err}") from None
    if not isinstance(model, Segmenter):
        raise ValueError(f"{model_name!r} is not a segmentation model; use a seg_* or semfpn_* preset "
                         "(vistra.list_models('seg*') + vistra.list_models('semfpn*'))")
    kwargs["num_classes"] = model.num_classes
    return model, kwargs


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pixel cross-entropy averaged over labelled pixels (IGNORE_INDEX skipped); 0 with a gradient when
    every pixel is ignored. logits (B, K, H, W), masks (B, H, W) int64."""
    total = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (masks != IGNORE_INDEX).sum().clamp(min=1)


def seg_step(model: nn.Module, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """Trainer step_fn: batch = (images (B, 3, H, W), masks (B, H, W)) -> (loss, logs)."""
    images, masks = batch
    return segmentation_loss(model(images), masks), {}


def build_datasets(data_root: str | os.PathLike, recipe: SegRecipe, num_classes: int,
                   splits: Sequence[str]) -> dict[str, SegmentationDataset]:
    """SegmentationDataset per split: the recipe's training transform on train_split, the eval one elsewhere."""
    train = build_seg_train_transform(recipe.crop_size, recipe.scale, recipe.ratio_range, recipe.cat_max_ratio,
                                      recipe.hflip, recipe.photometric)
    other = build_seg_eval_transform(recipe.eval_scale)
    return {split: SegmentationDataset(data_root, split, recipe.layout, recipe.reduce_zero_label,
                                       train if split == recipe.train_split else other, num_classes,
                                       allow_outside_root=recipe.allow_outside_root)
            for split in splits}


def train_segment(model_name: str, data_root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                  settings: Mapping[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
    """Train `model_name` on the dataset at `data_root` (any SegmentationDataset layout) into `out_dir`.

    settings: flat dict of SegRecipe fields, TrainConfig fields (defaults SEG_TRAIN_DEFAULTS) and
    `model.<option>` builder options (see `vistra.segmentation.config`). out_dir None: the settings' out_dir.
    Returns {"history", "metrics" (last eval's scalars), "weights" (model.safetensors), "out_dir",
    "num_train", "num_val"}.
    """
    recipe, cfg = resolve_config(settings, out_dir)
    out = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)  # the same initial weights for the same seed
    classes = read_class_names(data_root)
    model, model_kwargs = build_model(model_name, recipe, classes)
    init_weights = start_from(model, recipe.init_weights)
    backbone_weights = fine_tune_from(model, recipe.backbone_weights)
    num_classes = model.num_classes
    if classes and len(classes) != num_classes:
        raise ValueError(f"{Path(data_root) / 'classes.txt'} lists {len(classes)} classes but the model has "
                         f"num_classes={num_classes}; remove the num_classes setting or fix the file")
    classes = classes or [str(i) for i in range(num_classes)]
    splits = [recipe.train_split] + ([recipe.val_split] if recipe.val_split else [])
    data = build_datasets(data_root, recipe, num_classes, splits)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / RUN_CONFIG, yaml.safe_dump({"model": model_name, "data": str(data_root),
                                                  **recipe_dict(recipe), "train": cfg.to_dict()}, sort_keys=False))

    eval_fn = None
    if recipe.val_split:
        val_set = data[recipe.val_split]
        eval_fn = lambda m: scalars(evaluate(m, val_set, num_classes, recipe))  # noqa: E731
    prefix, body = find_backbone(model)
    groups = build_param_groups(model, cfg.weight_decay, {"head": recipe.head_lr_scale,
                                                          **backbone_lr_scales(body, prefix, 1.0, recipe.layer_decay)})
    trainer = Trainer(model, cfg, data[recipe.train_split], seg_step, eval_fn, param_groups=groups)
    history = trainer.fit(resume=resume)
    info = {"task": "segment", "model_name": model_name, "model_kwargs": model_kwargs, "classes": classes,
            "recipe": recipe_dict(recipe), "init_weights": init_weights, "backbone_weights": backbone_weights}
    weights = save_trained(final_weights(trainer), out, info)
    evaluated = [r for r in history if "mIoU" in r]
    return {"history": history, "metrics": scalars(evaluated[-1]) if evaluated else {}, "weights": str(weights),
            "out_dir": str(out), "num_train": len(data[recipe.train_split]),
            "num_val": len(data[recipe.val_split]) if recipe.val_split else 0}
