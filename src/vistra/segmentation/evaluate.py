"""Score a segmentation model on a mask dataset (`vistra eval segment`): mIoU, per-class IoU, pixel accuracy.

Predictions are resized to each mask's own size and counted in one confusion matrix over the whole set; under
torchrun every process scores its share of the images and the matrices are summed before the metrics.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vistra.atomic_io import write_json_atomic
from vistra.checkpoints.errors import CheckpointError
from vistra.data.seg_dataset import IGNORE_INDEX
from vistra.registry import create_model
from vistra.segmentation.config import SegRecipe, resolve_config
from vistra.segmentation.inference import segment
from vistra.segmentation.metrics import ConfusionMatrix
from vistra.segmentation.model import Segmenter
from vistra.trained import read_trained

EVAL_FILE = "eval_metrics.json"


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Sequence, num_classes: int, recipe: SegRecipe, progress: bool = False,
             distributed: bool = False) -> dict[str, Any]:
    """ConfusionMatrix.compute() of `model` (in its current mode) over (image (3, h, w), mask (H, W)) pairs,
    each prediction resized to its mask's size. distributed=True: this process takes every world_size-th
    image from its rank on and the matrices of all processes are summed (every process must call it)."""
    from vistra.engine.distributed import context

    ctx = context() if distributed else None
    indices = range(ctx.rank, len(dataset), ctx.world_size) if ctx else range(len(dataset))
    device = next(model.parameters()).device
    crop, stride = recipe.window()
    matrix = ConfusionMatrix(num_classes, IGNORE_INDEX)
    for i in tqdm(indices, desc="eval", disable=not progress, dynamic_ncols=True, leave=False):
        image, mask = dataset[i]
        logits = segment(model, image[None].to(device), recipe.eval_mode, crop, stride, out_size=mask.shape)
        matrix.update(logits.argmax(1), mask[None].to(device))  # (1, H, W)
    if ctx is not None:
        matrix.all_reduce()
    return matrix.compute()


def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The float entries of a metrics dict (drops the per-class lists)."""
    return {k: v for k, v in metrics.items() if isinstance(v, float)}


def load_segmenter(checkpoint: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Segmenter, dict]:
    """Rebuild a trained model from a run folder, its model.safetensors, or its last.pt / best.pt.

    Returns (model in eval mode on `device`, info: task, model_name, model_kwargs, classes, recipe).
    CheckpointError when the checkpoint does not describe a segmentation model.
    """
    state, info, path = read_trained(checkpoint)
    if info is None or info.get("task") != "segment":
        task = (info or {}).get("task")
        raise CheckpointError(f"{path}: not a segmentation model from `vistra train segment`"
                              + (f" (it is a {task} model)" if task else " (no model.json description)"))
    model = create_model(info["model_name"], **info["model_kwargs"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit {info['model_name']} (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]})")
    return model.to(device).eval(), info


def recipe_for(info: Mapping[str, Any], settings: Mapping[str, Any] | None) -> SegRecipe:
    """The run's saved recipe with `settings` (recipe keys, e.g. eval_mode) on top."""
    saved = {k: v for k, v in info.get("recipe", {}).items() if k != "model_kwargs"}
    recipe, _ = resolve_config({**saved, **(settings or {})}, train=False)
    return recipe


def per_class(names: Sequence[str], values: Sequence[float]) -> dict[str, float | None]:
    """{class name: value}, None for NaN (a class absent from the set)."""
    return {name: None if math.isnan(v) else v for name, v in zip(names, values)}


def eval_segment(checkpoint: str | os.PathLike, data_root: str | os.PathLike, split: str | None = None,
                 settings: Mapping[str, Any] | None = None, device: str = "auto", out: str | os.PathLike | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """mIoU, pixel_acc, mean_acc (fractions) and per-class IoU / accuracy (None for absent classes) of a
    trained model on `split` (default: the run's val_split), written to `out`/eval_metrics.json (default:
    beside the checkpoint). settings: SegRecipe fields (e.g. eval_mode="slide", layout, reduce_zero_label)."""
    from vistra.engine import distributed
    from vistra.engine.trainer import resolve_device
    from vistra.segmentation.recipe import build_datasets

    torch_device = resolve_device(device)
    ctx = distributed.setup(torch_device.type)
    if ctx.enabled and torch_device.type == "cuda":
        torch_device = torch.device("cuda", ctx.local_rank)
    model, info = load_segmenter(checkpoint, torch_device)
    recipe = recipe_for(info, settings)
    split = split or recipe.val_split or "val"
    dataset = build_datasets(data_root, recipe, model.num_classes, [split])[split]
    metrics = evaluate(model, dataset, model.num_classes, recipe, progress and ctx.is_main, distributed=ctx.enabled)
    classes = info["classes"]
    result = {**scalars(metrics), "per_class_iou": per_class(classes, metrics["per_class_iou"]),
              "per_class_acc": per_class(classes, metrics["per_class_acc"]), "split": split,
              "num_images": len(dataset), "eval_mode": recipe.eval_mode, "checkpoint": str(checkpoint),
              "data": str(data_root), "model": info["model_name"]}
    path = Path(out) if out else (Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent)
    result["json"] = str(path / EVAL_FILE)
    if ctx.is_main:
        write_json_atomic(path / EVAL_FILE, result)
    return result
