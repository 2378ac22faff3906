"""Train, evaluate and predict DETR / Deformable DETR on COCO-format data with the shared engine.

Entry points for the CLI: `train_detect` (`vistra train detect`), `eval_detect` (`vistra eval detect`) and
`predict_detect` (`vistra predict` with a detection checkpoint). A run folder holds the engine's files
(config.yaml, metrics.jsonl, last.pt, best.pt) plus model.json (task "detect", model name and options, classes,
recipe) and, at the end, model.safetensors (vistra.trained.save_trained), the weights eval and predict take.

Official recipes (the defaults): DETR — AdamW lr 1e-4, backbone 1e-5, weight decay 1e-4, gradient clipping
0.1, 300 epochs with the lr divided by 10 after 200. Deformable DETR — lr 2e-4, backbone 2e-5, the sampling
offset and reference point projections at 0.1x, 50 epochs, drop after 40. Labels are the dataset's category
ids, so num_classes defaults to the largest id + 1.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Subset

from vistra.atomic_io import write_json_atomic
from vistra.checkpoints.backbone import find_backbone, fine_tune_from
from vistra.checkpoints.init_weights import start_from
from vistra.data.batching import collate_detection
from vistra.data.coco import CocoDetection, build_coco
from vistra.data.det_transforms import (
    DETR_CROP_RESIZE,
    DETR_CROP_SIZE,
    DETR_MAX_SIZE,
    DETR_SCALES,
    build_det_eval_transform,
    build_det_train_transform,
)
from vistra.data.errors import DataError
from vistra.engine import TrainConfig, Trainer, build_param_groups
from vistra.engine.optim import backbone_lr_scales
from vistra.registry import create_model
from vistra.trained import INFO_FILE, final_weights, save_trained

from .criterion import build_criterion
from .evaluate import COCO_STATS, evaluate_coco
from .postprocess import postprocess

DETR_TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 1e-4, "weight_decay": 1e-4, "clip_grad": 0.1, "batch_size": 4, "epochs": 300, "schedule": "step",
    "lr_drop_epochs": [200], "warmup_epochs": 0.0, "best_metric": "AP",
}
DEFORMABLE_TRAIN_DEFAULTS: dict[str, Any] = {**DETR_TRAIN_DEFAULTS, "lr": 2e-4, "epochs": 50, "lr_drop_epochs": [40]}


@dataclass
class DetRecipe:
    """Data, augmentation and optimisation settings of a detection run (the loop's own are in TrainConfig).

    Data: `root` layout (see build_coco) with train_split / val_split (None: no evaluation), or explicit
    train_images + train_ann (and val_images + val_ann). max_train_images / max_val_images: use only the
    first N images (quick runs). skip_bad, allow_outside_root: see CocoDetection.
    Augmentation: see det_transforms (scales, max_size, crop_resize (None: no crop branch), crop_size, hflip;
    eval_size / eval_max_size for evaluation and prediction).
    lr_backbone: absolute lr of the backbone (default: lr / 10, the official 1e-5 and 2e-5);
    lr_linear_proj_mult: lr multiplier of `*sampling_offsets*` / `*reference_points*` (Deformable DETR).
    init_weights: a trained model (vistra run folder or file, official / Hugging Face detector) to start from:
    tensors of matching name and shape load, the rest (a class_embed for other classes) starts fresh.
    backbone_weights: an ImageNet (or detector) checkpoint loaded into the backbone before training (any
    supported format; the heads start fresh); layer_decay < 1: layer-wise lr decay inside the backbone.
    model_kwargs (`model.<name>` keys): create_model options; criterion_kwargs (`criterion.<name>`):
    build_criterion options (loss weights, matcher costs, eos_coef, focal_alpha).
    """

    num_classes: int | None = None
    train_split: str = "train"
    val_split: str | None = "val"
    train_images: str | None = None
    train_ann: str | None = None
    val_images: str | None = None
    val_ann: str | None = None
    max_train_images: int | None = None
    max_val_images: int | None = None
    skip_bad: bool = False
    allow_outside_root: bool = False
    scales: list[int] = field(default_factory=lambda: list(DETR_SCALES))
    max_size: int | None = DETR_MAX_SIZE
    crop_resize: list[int] | None = field(default_factory=lambda: list(DETR_CROP_RESIZE))
    crop_size: list[int] = field(default_factory=lambda: list(DETR_CROP_SIZE))
    hflip: float = 0.5
    eval_size: int | None = 800
    eval_max_size: int | None = DETR_MAX_SIZE
    eval_batch_size: int = 2
    lr_backbone: float | None = None
    lr_linear_proj_mult: float = 0.1
    init_weights: str | None = None
    backbone_weights: str | None = None
    layer_decay: float = 1.0
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    criterion_kwargs: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- config
def resolve_config(overrides: Mapping[str, Any] | None, train: bool = True) -> tuple[DetRecipe, dict[str, Any]]:
    """Split flat overrides into a DetRecipe (with `model.*` / `criterion.*` options) and the TrainConfig
    overrides; unknown keys raise ValueError listing the known ones. train=False accepts recipe keys only.
    Keys may carry a `train.` / `data.` / `aug.` prefix, as in the other tasks' configs."""
    recipe_keys = {f.name for f in dataclasses.fields(DetRecipe)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} if train else set()
    values: dict[str, Any] = {"model_kwargs": {}, "criterion_kwargs": {}}
    train_values: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        key = _strip_section(key)
        if key.startswith(("model.", "criterion.")):
            group, name = key.split(".", 1)
            values[f"{group}_kwargs"][name] = value
        elif key in ("model_kwargs", "criterion_kwargs"):
            values[key] = {**values[key], **value}
        elif key in recipe_keys:
            values[key] = value
        elif key in train_keys:
            train_values[key] = value
        else:
            raise ValueError(f"unknown detection setting {key!r}; recipe keys: {sorted(recipe_keys)}"
                             + (f", TrainConfig keys: {sorted(train_keys)}" if train else "")
                             + ", model options as model.<name>, loss options as criterion.<name>")
    return DetRecipe(**values), train_values


def _strip_section(key: str) -> str:
    """`train.lr` -> `lr`, `aug.hflip` -> `hflip`, `data.max_val_images` -> ...: the other tasks' section
    prefixes are accepted, the settings themselves are flat."""
    head, dot, rest = key.partition(".")
    return rest if dot and head in ("train", "data", "aug") else key


def train_config(model: nn.Module, train_values: Mapping[str, Any], out_dir: str | os.PathLike) -> TrainConfig:
    """TrainConfig of the official recipe of the model's family (DETR / Deformable DETR) with the overrides."""
    defaults = DEFORMABLE_TRAIN_DEFAULTS if is_focal(model) else DETR_TRAIN_DEFAULTS
    return TrainConfig.from_dict({**defaults, **train_values, "out_dir": str(out_dir)})


# --------------------------------------------------------------------------------------------- data
def build_datasets(data: str | os.PathLike | None, recipe: DetRecipe, splits: Iterable[str] = ("train", "val"),
                   quiet: bool = False) -> dict[str, Any]:
    """{"train": ..., "val": ...} CocoDetection datasets (Subsets with max_*_images) with the recipe's
    transforms; a split is left out when val_split is None and no val paths are given."""
    out: dict[str, Any] = {}
    for which in splits:
        split = recipe.train_split if which == "train" else recipe.val_split
        images, ann = getattr(recipe, f"{which}_images"), getattr(recipe, f"{which}_ann")
        if split is None and (images is None or ann is None):
            continue
        if which == "train":
            transform = build_det_train_transform(recipe.scales, recipe.max_size, recipe.crop_resize,
                                                  recipe.crop_size, recipe.hflip)
        else:
            transform = build_det_eval_transform(recipe.eval_size, recipe.eval_max_size)
        dataset = build_coco(data, split or which, img_folder=images, ann_file=ann, transforms=transform,
                             skip_bad=recipe.skip_bad, quiet=quiet, allow_outside_root=recipe.allow_outside_root)
        limit = recipe.max_train_images if which == "train" else recipe.max_val_images
        out[which] = Subset(dataset, range(min(limit, len(dataset)))) if limit else dataset
    return out


def _coco(dataset: Any) -> CocoDetection:
    return dataset.dataset if isinstance(dataset, Subset) else dataset


def class_names(dataset: Any) -> dict[int, str]:
    """{category id: name} of a (Subset of a) CocoDetection."""
    return dict(_coco(dataset).categories)


# -------------------------------------------------------------------------------------------- model
def register_detectors() -> None:
    """Import the detector modules so their presets are registered (Deformable DETR when present)."""
    import vistra.detection.detr  # noqa: F401  (registers the DETR presets)

    try:
        import vistra.detection.deformable_detr  # noqa: F401
    except ModuleNotFoundError as err:  # not written yet; a missing dependency inside it is a real error
        if err.name != "vistra.detection.deformable_detr":
            raise


def build_model(model_name: str, recipe: DetRecipe, num_classes: int) -> tuple[nn.Module, dict[str, Any]]:
    """The detector `model_name` with `num_classes`; returns it and the create_model kwargs that rebuild it."""
    register_detectors()
    kwargs = {**recipe.model_kwargs, "num_classes": num_classes}
    return create_model(model_name, **kwargs), kwargs


def is_focal(model: nn.Module) -> bool:
    """True for sigmoid / focal classification heads (Deformable DETR), False for DETR's softmax + no-object."""
    arch = str(getattr(model, "arch", ""))
    return arch.startswith("deformable") or hasattr(getattr(model, "config", None), "num_feature_levels")


def output_layout(model: nn.Module) -> tuple[int, bool]:
    """(number of aux_outputs, has enc_outputs) of the model's forward: from model.config when it says, else
    from one forward of a small blank image."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "dec_layers") and hasattr(config, "aux_loss"):
        return (config.dec_layers - 1 if config.aux_loss else 0), bool(getattr(config, "two_stage", False))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(torch.zeros(1, 3, 64, 64, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
    return len(outputs.get("aux_outputs") or []), outputs.get("enc_outputs") is not None


def criterion_for(model: nn.Module, num_classes: int, **kwargs: Any) -> nn.Module:
    """The official criterion matching the model's head and outputs (kwargs: build_criterion options)."""
    aux_layers, two_stage = output_layout(model)
    return build_criterion(num_classes, deformable=is_focal(model), aux_layers=aux_layers, two_stage=two_stage,
                           **kwargs)


def postprocess_for(model: nn.Module):
    """postprocess with the model's head type: softmax (DETR) or focal top-100 (Deformable DETR)."""
    return partial(postprocess, focal=is_focal(model))


def param_groups_for(model: nn.Module, cfg: TrainConfig, recipe: DetRecipe) -> list[dict[str, Any]]:
    """AdamW groups: backbone at lr_backbone (default lr / 10; with layer-wise decay when recipe.layer_decay
    < 1), Deformable DETR's sampling offsets and reference points at lr * lr_linear_proj_mult, the rest at lr."""
    lr_backbone = recipe.lr_backbone if recipe.lr_backbone is not None else cfg.lr / 10
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    try:
        prefix, body = find_backbone(model)
    except ValueError:  # no backbone.body: the whole `backbone` module (if any) takes the backbone lr
        prefix, body = "backbone", getattr(model, "backbone", nn.Module())
    scales = backbone_lr_scales(body, prefix, lr_backbone / cfg.lr, recipe.layer_decay)  # {} when frozen
    if any(n.startswith("backbone.") and not n.startswith(prefix + ".") for n in names):
        scales["backbone"] = lr_backbone / cfg.lr  # learned position embeddings beside the body
    if is_focal(model):
        offsets = {p: recipe.lr_linear_proj_mult for p in ("*sampling_offsets*", "*reference_points*")
                   if any(fnmatch.fnmatchcase(n, p) for n in names)}  # two-stage models have no reference_points
        scales = {**offsets, **scales}
    return build_param_groups(model, cfg.weight_decay, scales)


def detection_step(model: nn.Module, batch: Any, criterion: nn.Module) -> tuple[torch.Tensor, dict[str, float]]:
    """Trainer step_fn: batch = (images, mask, targets) from collate_detection -> (total loss, main losses)."""
    images, mask, targets = batch
    losses = criterion(model(images, mask), targets)
    logs = {k: float(losses[k].detach()) for k in ("loss_ce", "loss_bbox", "loss_giou", "class_error") if k in losses}
    return losses["loss"], logs


# ---------------------------------------------------------------------------------------- training
def train_detect(model_name: str, data: str | os.PathLike | None, out_dir: str | os.PathLike,
                 overrides: Mapping[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
    """Train `model_name` (e.g. "detr_resnet50", "detr" with model.* options) on COCO-format data into out_dir.

    data: dataset root (COCO layout, or what make_digits_det writes), or None with explicit train_images /
    train_ann (and val_images / val_ann) overrides. overrides: flat dict of DetRecipe fields, TrainConfig fields
    (defaults DETR_TRAIN_DEFAULTS, or DEFORMABLE_TRAIN_DEFAULTS for deformable models), `model.<option>` and
    `criterion.<option>` keys. Evaluates COCO AP on the val split every cfg.eval_every epochs.
    Returns {"history", "metrics" (last eval), "model_path"}.
    """
    recipe, train_values = resolve_config(overrides)
    sets = build_datasets(data, recipe, quiet=not train_values.get("progress", True))
    train_set, val_set = sets["train"], sets.get("val")
    num_classes = recipe.num_classes or _coco(train_set).num_classes
    for dataset in sets.values():
        if _coco(dataset).num_classes > num_classes:
            raise DataError(_coco(dataset).ann_file, f"has category ids up to {_coco(dataset).num_classes - 1} "
                                                     f"but num_classes={num_classes}; num_classes must be > max id")
    torch.manual_seed(int(train_values.get("seed", TrainConfig.seed)))  # the same initial weights for the same seed
    model, model_kwargs = build_model(model_name, recipe, num_classes)
    cfg = train_config(model, train_values, out_dir)
    info = {"task": "detect", "model_name": model_name, "model_kwargs": model_kwargs, "num_classes": num_classes,
            "classes": {str(k): v for k, v in class_names(train_set).items()}, "recipe": dataclasses.asdict(recipe),
            "init_weights": start_from(model, recipe.init_weights),
            "backbone_weights": fine_tune_from(model, recipe.backbone_weights)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / INFO_FILE, info)  # lets eval / predict read last.pt mid-run

    criterion = criterion_for(model, num_classes, **recipe.criterion_kwargs)
    eval_fn = None
    if val_set is not None:
        post = postprocess_for(model)
        eval_fn = lambda m: evaluate_coco(m, val_set, post, batch_size=recipe.eval_batch_size,  # noqa: E731
                                          progress=cfg.progress)
    trainer = Trainer(model, cfg, train_set, partial(detection_step, criterion=criterion), eval_fn,
                      collate_fn=collate_detection, param_groups=param_groups_for(model, cfg, recipe))
    criterion.to(trainer.device)
    history = trainer.fit(resume=resume)
    metrics = shipped_metrics(history, cfg.best_metric if trainer.best_path.is_file() else None)
    model_path = save_trained(final_weights(trainer), out, {**info, "metrics": metrics})
    return {"history": history, "metrics": metrics, "model_path": str(model_path)}


def shipped_metrics(history: list[Mapping[str, Any]], best_metric: str | None) -> dict[str, float]:
    """The COCO stats of the evaluation whose weights a run ships: the best one by best_metric (max) when
    given, else the last one; {} when nothing was evaluated."""
    evaluated = [r for r in history if "AP" in r]
    if not evaluated:
        return {}
    chosen = max(evaluated, key=lambda r: r[best_metric]) if best_metric in evaluated[-1] else evaluated[-1]
    return {k: float(chosen[k]) for k in ("epoch", *COCO_STATS) if k in chosen}
