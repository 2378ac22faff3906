"""Training and evaluating the TransCenter-style tracker on MOTChallenge, KITTI tracking or UA-DETRAC data.

`train_track(model_name, data_root, out_dir, overrides)` trains on frame pairs of DATA/train sequences (the
same random flip / resize / crop on both frames), with CenterNet targets at stride 4 and the center losses
(focal heatmap, L1 size / offset / tracking displacement); AdamW, backbone at 0.1x lr, step drop. After
training it tracks DATA/val and scores it with TrackEval (HOTA / MOTA / IDF1). Settings are flat keys: the
TrackRecipe fields, TrainConfig fields, and `model.<option>` for create_model.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vistra.checkpoints.backbone import find_backbone, fine_tune_from
from vistra.checkpoints.init_weights import start_from
from vistra.data.batching import collate_detection
from vistra.data.errors import DataError
from vistra.engine import TrainConfig, Trainer, build_param_groups
from vistra.engine.optim import backbone_lr_scales
from vistra.tracking.centernet import build_targets, center_losses

TRACK_TRAIN_DEFAULTS = {"lr": 2e-4, "weight_decay": 1e-4, "batch_size": 8, "epochs": 50, "schedule": "step",
                        "lr_drop_epochs": [40], "warmup_epochs": 0.0, "clip_grad": 35.0}


@dataclass
class TrackRecipe:
    """Data and augmentation settings of a tracking run (the loop's own are in TrainConfig).

    Data: DATA/<train_split> and DATA/<val_split> hold MOTChallenge, KITTI tracking or UA-DETRAC sequences
    (vistra.tracking.datasets). KITTI and UA-DETRAC data, and MOTChallenge data with a classes.txt, are
    multi-class: each class gets a heatmap channel, unless class_agnostic (one channel for every class); other
    MOTChallenge data is pedestrians (MOT17's rule: gt class 1, considered rows). class_map: renames classes
    ("Van=Car,Misc=ignore", or a file of such lines; see vistra.tracking.datasets). classes: the class names
    to track (multi-class data); default: every class with boxes in the training split.
    max_gap: the earlier frame of a pair is 1..max_gap frames back.
    Augmentation: scales (shorter side), max_size, hflip; eval_size: shorter side when tracking.
    lr_backbone_mult: the backbone's lr relative to lr; layer_decay < 1: layer-wise lr decay inside it.
    init_weights: a trained model (vistra run folder or file, official TransCenter file) to start from: tensors
    of matching name and shape load, the rest (a heatmap head for other classes) starts fresh.
    backbone_weights: an ImageNet (or detector) checkpoint loaded into the backbone before training.
    allow_outside_root: accept MOTChallenge seqinfo.ini files whose imDir leaves the sequence folder.
    """

    train_split: str = "train"
    val_split: str | None = "val"
    class_agnostic: bool = False
    max_gap: int = 3
    min_visibility: float = 0.0
    scales: list[int] = field(default_factory=lambda: [480, 512, 544, 576, 608])
    max_size: int | None = 1088
    hflip: float = 0.5
    eval_size: int = 608
    eval_max_size: int | None = 1088
    lr_backbone_mult: float = 0.1
    layer_decay: float = 1.0
    init_weights: str | None = None
    backbone_weights: str | None = None
    skip_bad: bool = False
    allow_outside_root: bool = False
    class_map: str | dict[str, str] | None = None
    classes: list[str] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)


def resolve_config(overrides: Mapping[str, Any] | None, train: bool = True) -> tuple[TrackRecipe, dict[str, Any]]:
    """Flat overrides -> (TrackRecipe with `model.*` options, TrainConfig overrides); unknown keys: ValueError."""
    recipe_keys = {f.name for f in dataclasses.fields(TrackRecipe)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)} if train else set()
    values: dict[str, Any] = {"model_kwargs": {}}
    train_values: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        key = key[len("train."):] if key.startswith("train.") else key  # as the other tasks: train.lr = lr
        if key.startswith("model."):
            values["model_kwargs"][key.split(".", 1)[1]] = value
        elif key == "model_kwargs":
            values["model_kwargs"] = {**values["model_kwargs"], **value}
        elif key in recipe_keys:
            values[key] = value
        elif key in train_keys:
            train_values[key] = value
        else:
            raise ValueError(f"unknown tracking setting {key!r}; recipe keys: {sorted(recipe_keys)}"
                             + (f", TrainConfig keys: {sorted(train_keys)}" if train else "")
                             + ", model options as model.<name>")
    return TrackRecipe(**values), train_values


# --------------------------------------------------------------------------------------------- data
def sequences_of(data_root: str | os.PathLike, split: str, class_map: Mapping[str, str] | str | None = None,
                 skip_bad: bool = False, allow_outside_root: bool = False) -> list:
    """The sequences (vistra.tracking.datasets.TrackingSequence) under DATA/split, in any tracking format."""
    from vistra.tracking.datasets import open_sequences

    folder = Path(data_root) / split
    if not folder.is_dir():
        raise DataError(folder, f"no {split} folder of tracking sequences (MOTChallenge, KITTI or UA-DETRAC)")
    return open_sequences(folder, class_map=class_map, skip_bad=skip_bad, allow_outside_root=allow_outside_root)


def dataset_classes(data_root: str | os.PathLike, recipe: TrackRecipe) -> dict[int, str] | None:
    """{gt class id: name} of a multi-class dataset (KITTI, UA-DETRAC, or classes.txt in DATA/<train_split> or
    DATA), or None: then the data is MOTChallenge pedestrians (MOT17's rule: class 1, considered rows) tracked as
    one class."""
    from vistra.tracking.datasets import ClassTable, class_names, detect_format, parse_class_map
    from vistra.tracking.mot_io import read_class_names

    folder = Path(data_root) / recipe.train_split
    format = detect_format(folder) if folder.is_dir() else "mot"
    if format != "mot":
        return class_names(format, recipe.class_map)
    names = read_class_names(folder) or read_class_names(data_root)
    return ClassTable("mot", parse_class_map(recipe.class_map), names).names if names and recipe.class_map else names


def tracked_classes(names: dict[int, str] | None, wanted: Sequence[str] | None,
                    sequences: Sequence[Any]) -> dict[int, str] | None:
    """The classes a multi-class run tracks: those named in `wanted` (case-insensitive; ValueError listing the
    dataset's classes for others), else those with boxes in the training sequences. None stays None."""
    if names is None:
        return None
    if wanted:
        by_name = {n.lower(): cid for cid, n in names.items()}
        unknown = [w for w in wanted if w.lower() not in by_name]
        if unknown:
            raise ValueError(f"classes {unknown} are not in the dataset; its classes: {', '.join(names.values())}")
        return {by_name[w.lower()]: names[by_name[w.lower()]] for w in wanted}
    present = {int(c) for seq in sequences for c in np.unique(seq.gt.select(seq.gt.scores != 0).classes)}
    return {cid: name for cid, name in names.items() if cid in present} or names


def heatmap_classes(names: dict[int, str] | None, recipe: TrackRecipe) -> tuple[list[str], list[int] | None]:
    """(channel names, gt class id of each channel or None): one "object" channel when class-agnostic or for
    pedestrian data; else one channel per class of classes.txt in id order."""
    if recipe.class_agnostic or not names:
        return ["pedestrian" if not names else "object"], None
    ids = sorted(names)
    return [names[i] for i in ids], ids


def build_pairs(sequences: Sequence[Any], recipe: TrackRecipe, class_ids: list[int] | None, multi_class: bool,
                train: bool):
    """FramePairDataset over `sequences` with the recipe's pair transform; gt class ids become heatmap channels
    (class_ids[k] -> k; every class -> 0 when class_ids is None)."""
    from vistra.data.frame_pairs import FramePairDataset, PairTransform, build_pair_transform
    from vistra.tracking.mot_io import MOT17_PEDESTRIANS, GtFilter

    if train:
        from vistra.data.det_transforms import build_det_train_transform

        geometric = build_det_train_transform(recipe.scales, recipe.max_size, None, (1, 1), recipe.hflip).geometric
        transform = PairTransform(geometric)
    else:
        transform = build_pair_transform(train=False, eval_size=recipe.eval_size, max_size=recipe.eval_max_size)
    classes = (tuple(class_ids) if class_ids else None) if multi_class else MOT17_PEDESTRIANS.classes
    gt_filter = GtFilter(classes=classes, min_visibility=recipe.min_visibility)
    mapping = {cid: k for k, cid in enumerate(class_ids)} if class_ids else _AgnosticMap()
    return FramePairDataset(sequences, transform, max_gap=recipe.max_gap, gt_filter=gt_filter, label_map=mapping,
                            skip_bad=recipe.skip_bad)


class _AgnosticMap(dict):
    """Every class id -> channel 0."""

    def __missing__(self, key: int) -> int:
        return 0


def _pixel_xyxy(target: dict) -> torch.Tensor:
    """A transformed target's normalised cxcywh boxes -> absolute xyxy in its image's pixels."""
    h, w = (int(v) for v in target["size"])
    cx, cy, bw, bh = target["boxes"].unbind(-1)
    return torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], -1)


def collate_pairs(batch: Sequence[tuple]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """[(prev image, prev target, image, target)] -> (images, masks, prev images, prev masks, targets) padded to a
    multiple of 32; targets carry pixel xyxy "boxes", "labels", "track_ids", "ignore_boxes" and the previous
    frame's "prev_boxes" / "prev_track_ids", as vistra.tracking.centernet.build_targets expects."""
    prev_images, prev_masks, _ = collate_detection([(b[0], b[1]) for b in batch], size_divisibility=32)
    images, masks, _ = collate_detection([(b[2], b[3]) for b in batch], size_divisibility=32)
    if prev_images.shape != images.shape:  # both frames of a pair have one size; pad the batches alike
        H, W = max(prev_images.shape[-2], images.shape[-2]), max(prev_images.shape[-1], images.shape[-1])
        prev_images, prev_masks = _pad_to(prev_images, prev_masks, H, W)
        images, masks = _pad_to(images, masks, H, W)
    targets = [{"boxes": _pixel_xyxy(t), "labels": t["labels"], "track_ids": t["track_ids"],
                "ignore_boxes": t.get("ignore_boxes", torch.zeros(0, 4)),
                "prev_boxes": _pixel_xyxy(p), "prev_track_ids": p["track_ids"]} for p, t in
               ((b[1], b[3]) for b in batch)]
    return images, masks, prev_images, prev_masks, targets


def _pad_to(images: torch.Tensor, masks: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    out = images.new_zeros(*images.shape[:2], H, W)
    out[..., : images.shape[-2], : images.shape[-1]] = images
    mask = torch.ones(images.shape[0], H, W, dtype=torch.bool)
    mask[:, : masks.shape[-2], : masks.shape[-1]] = masks
    return out, mask


def track_step(model: nn.Module, batch: tuple, num_classes: int, stride: int = 4
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """One training step's loss: the model on (frame t, frame t-1), center losses against the pair's targets."""
    images, masks, prev_images, prev_masks, targets = batch
    outputs = model(images, prev_images, masks, prev_masks)
    out_size = tuple(outputs["hm"].shape[-2:])
    dense = build_targets(targets, num_classes, out_size, stride)
    dense = {k: v.to(images.device) for k, v in dense.items()}
    losses = center_losses(outputs, dense)
    return losses["loss"], {k: float(v.detach()) for k, v in losses.items() if k != "loss"}


# -------------------------------------------------------------------------------------------- train
def train_track(model_name: str, data_root: str | os.PathLike, out_dir: str | os.PathLike,
                overrides: Mapping[str, Any] | None = None, resume: bool = False) -> dict[str, Any]:
    """Train a tracker on DATA/train; track and score DATA/val at the end. Returns {"history", "metrics" (the
    val HOTA / MOTA / IDF1 ... of the final model, {} without val), "weights" (model.safetensors)}."""
    from functools import partial

    import vistra
    from vistra.trained import final_weights, save_trained

    recipe, train_values = resolve_config(overrides)
    train_seqs = sequences_of(data_root, recipe.train_split, recipe.class_map, recipe.skip_bad,
                              recipe.allow_outside_root)
    found = tracked_classes(dataset_classes(data_root, recipe), recipe.classes, train_seqs)
    names, class_ids = heatmap_classes(found, recipe)
    train_set = build_pairs(train_seqs, recipe, class_ids, bool(found), train=True)
    model_kwargs = {**recipe.model_kwargs, "num_classes": len(names)}
    cfg = TrainConfig.from_dict({**TRACK_TRAIN_DEFAULTS, **train_values, "out_dir": str(out_dir)})
    torch.manual_seed(cfg.seed)  # the same initial weights for the same seed
    model = vistra.create_model(model_name, **model_kwargs)
    init_weights = start_from(model, recipe.init_weights)
    backbone_weights = fine_tune_from(model, recipe.backbone_weights)
    prefix, body = find_backbone(model)
    groups = build_param_groups(model, cfg.weight_decay,
                                backbone_lr_scales(body, prefix, recipe.lr_backbone_mult, recipe.layer_decay))
    trainer = Trainer(model, cfg, train_set, partial(track_step, num_classes=len(names)),
                      collate_fn=collate_pairs, param_groups=groups)
    history = trainer.fit(resume=resume)
    info = {"task": "track", "model_name": model_name, "model_kwargs": model_kwargs, "classes": names,
            "class_ids": class_ids, "multi_class": bool(found), "recipe": dataclasses.asdict(recipe),
            "init_weights": init_weights, "backbone_weights": backbone_weights}
    model.load_state_dict(final_weights(trainer))
    weights = save_trained(model, out_dir, info) if trainer.dist.is_main else None
    metrics: dict[str, Any] = {}
    if recipe.val_split and trainer.dist.is_main:
        metrics = track_and_score(model.eval(), info, Path(data_root) / recipe.val_split, Path(out_dir) / "val")
    return {"history": history, "metrics": metrics, "weights": str(weights) if weights else None}


def track_and_score(model: nn.Module, info: Mapping[str, Any], gt_root: str | os.PathLike,
                    out_dir: str | os.PathLike, progress: bool = False, tracker: Any = None,
                    render: bool = False) -> dict[str, Any]:
    """Track every sequence under gt_root with the model (tracker: a TrackerConfig, default settings when None),
    write OUT/<seq>.txt (and rendered frames with render), score them with TrackEval (class-agnostic when the
    model was trained so) -> the combined headline metrics."""
    from vistra.tracking.by_detection import track_to_folder
    from vistra.tracking.by_model import CenterTracking
    from vistra.tracking.datasets import open_sequences
    from vistra.tracking.evaluate import evaluate_tracking

    threshold = 0.05 if tracker is None else min(tracker.match_score, tracker.new_track_score)
    tracker_model = CenterTracking(model, info, score_threshold=threshold)
    names = dict(zip(info.get("class_ids") or [1], info["classes"]))
    class_map = info.get("recipe", {}).get("class_map")
    outside = bool(info.get("recipe", {}).get("allow_outside_root"))
    for seq in open_sequences(gt_root, class_map=class_map, allow_outside_root=outside):
        if seq.folder is None:
            raise DataError(seq.source, f"sequence {seq.name} has no frame images to track")
        track_to_folder(seq.folder, tracker_model, out_dir, tracker, class_names=names, render=render,
                        progress=progress)
    agnostic = bool(info.get("multi_class")) and not info.get("class_ids")
    classes = list(info["classes"]) if info.get("class_ids") else None  # the classes the model tracks
    report = evaluate_tracking(gt_root, out_dir, class_agnostic=agnostic, class_map=class_map, classes=classes,
                               out_json=Path(out_dir) / "track_metrics.json")
    combined = report["combined"]
    key = "class_averaged" if "class_averaged" in combined else next(iter(combined))
    return {k: combined[key][k] for k in ("HOTA", "DetA", "AssA", "MOTA", "IDF1", "IDSW") if k in combined[key]}
