"""Use a trained detector: rebuild it from its checkpoint, score it with COCO AP, run it on image files.

A checkpoint is what `vistra train detect` writes (model.safetensors with its description, a run folder, or
last.pt / best.pt beside the run's model.json), read with vistra.trained.read_trained. Foreign weights that
carry no description (an official DETR `.pth`, a Hugging Face folder) load too when the model is named: the
class count then comes from the weights' classification head.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from vistra.atomic_io import write_json_atomic
from vistra.checkpoints import CheckpointError, convert_state_dict, load_pretrained
from vistra.data.det_transforms import build_det_eval_transform
from vistra.data.errors import DataError
from vistra.data.image_folder import IMG_EXTENSIONS
from vistra.data.image_io import read_image
from vistra.engine.trainer import resolve_device
from vistra.registry import create_model
from vistra.trained import read_trained

from .evaluate import evaluate_coco
from .recipe import DetRecipe, build_datasets, postprocess_for, register_detectors, resolve_config
from .render import save_detections

PREDICTIONS = "predictions.json"


def load_detector(checkpoint: str | os.PathLike, device: str | torch.device = "cpu",
                  model_name: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """checkpoint -> (model in eval mode on `device`, info with task, model_name, model_kwargs, num_classes,
    classes ({id: name}, ids as ints; {} when unknown), recipe ({} when unknown)).

    model_name: needed for weights without a description (then num_classes comes from the class head);
    overrides the stored name otherwise. Raises CheckpointError naming the file when it is not a detector's.
    """
    state, info, path = read_trained(checkpoint)
    if info is not None and info.get("task") != "detect":
        raise CheckpointError(f"{path}: holds a {info.get('task')!r} model, not a detector")
    register_detectors()
    if info is None:
        if model_name is None:
            raise CheckpointError(f"{path}: does not say which detector it holds; pass --model NAME")
        info = {"model_name": model_name, "model_kwargs": {"num_classes": _head_classes(state, model_name, path)},
                "classes": {}, "recipe": {}}
    name = model_name or info["model_name"]
    kwargs = dict(info.get("model_kwargs") or {})
    model = create_model(name, **kwargs)
    load_pretrained(model, state)  # converts official / HF names; CheckpointError lists what does not fit
    classes = {int(k): str(v) for k, v in (info.get("classes") or {}).items()}
    out = {"task": "detect", "model_name": name, "model_kwargs": kwargs,
           "num_classes": int(kwargs.get("num_classes", getattr(model, "num_classes", 0))), "classes": classes,
           "recipe": dict(info.get("recipe") or {}), "checkpoint": str(path)}
    return model.to(device).eval(), out


def _head_classes(state: dict[str, torch.Tensor], model_name: str, path: Path) -> int:
    """num_classes of a detector's weights: DETR's class head has num_classes + 1 rows, Deformable DETR's
    (sigmoid) num_classes."""
    converted = convert_state_dict(state)
    heads = [k for k in converted if k.startswith("class_embed") and k.endswith("weight")]
    if not heads:
        raise CheckpointError(f"{path}: no class_embed weights found; is it a {model_name} checkpoint?")
    rows = int(converted[sorted(heads)[0]].shape[0])
    return rows if model_name.startswith("deformable") else rows - 1


def recipe_of(info: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> DetRecipe:
    """The DetRecipe a checkpoint was trained with (defaults for foreign weights), with recipe overrides."""
    recipe, _ = resolve_config({**info["recipe"], **(overrides or {})}, train=False)
    return recipe


def eval_detect(checkpoint: str | os.PathLike, data: str | os.PathLike | None, split: str | None = None,
                overrides: Mapping[str, Any] | None = None, device: str = "auto", progress: bool = True,
                results_path: str | os.PathLike | None = None, model_name: str | None = None) -> dict[str, Any]:
    """COCO box AP of a trained detector -> the 12 COCO_STATS plus "split", "num_images", "checkpoint".

    data: dataset root (split: default the run's val_split, else "val"), or None with val_images / val_ann
    overrides. overrides: DetRecipe fields (e.g. eval_size; max_val_images to score only the first N images; by
    default all of them, whatever the training run used). results_path: also write the COCO-format detections.
    """
    model, info = load_detector(checkpoint, resolve_device(device), model_name)
    recipe = recipe_of(info, {"max_val_images": None, **(overrides or {})})  # the whole split unless asked
    if split is not None:
        recipe.val_split = split
    if recipe.val_split is None and recipe.val_images is None:
        recipe.val_split = "val"
    val_set = build_datasets(data, recipe, splits=("val",), quiet=not progress)["val"]
    stats = evaluate_coco(model, val_set, postprocess_for(model), batch_size=recipe.eval_batch_size,
                          progress=progress, results_path=results_path, verbose=progress)
    return {**stats, "split": recipe.val_split or "val", "num_images": len(val_set), "checkpoint": info["checkpoint"]}


def image_paths(images: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Image files named, or found (recursively, sorted) in the folders named; DataError for a missing path."""
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    paths = []
    for item in map(Path, images):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(item, "image file or folder does not exist")
    return paths


@torch.no_grad()
def predict_detect(images: Iterable[str | os.PathLike] | str | os.PathLike, checkpoint: str | os.PathLike,
                   out_dir: str | os.PathLike, threshold: float = 0.5, overrides: Mapping[str, Any] | None = None,
                   device: str = "auto", progress: bool = True, model_name: str | None = None,
                   skip_bad: bool = False) -> dict[str, Any]:
    """Detect objects in image files (folders are searched recursively) with a trained detector.

    Writes `<stem>_det.png` per image (boxes, class names and scores drawn on the full-size image) and
    predictions.json: the detections with score > threshold in the COCO results format (image_id = the
    image's 1-based position in the list, bbox [x, y, w, h] in the image's pixels) plus file_name and the
    category name. Unreadable images raise DataError, or with skip_bad are listed in "skipped".
    Returns {"predictions": [{"image", "rendered", "detections"}, ...], "skipped": [...], "json": path}.
    """
    model, info = load_detector(checkpoint, resolve_device(device), model_name)
    recipe = recipe_of(info, overrides)
    transform = build_det_eval_transform(recipe.eval_size, recipe.eval_max_size)
    post = postprocess_for(model)
    model_device = next(model.parameters()).device
    names = info["classes"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records, results, skipped = [], [], []
    for image_id, path in enumerate(tqdm(image_paths(images), desc="predict", disable=not progress), start=1):
        try:
            picture = read_image(path)
        except DataError:
            if not skip_bad:
                raise
            skipped.append(str(path))
            continue
        pixels, _ = transform(picture, {"boxes": torch.zeros(0, 4)})  # (3, h, w)
        outputs = model(pixels[None].to(model_device))
        found = post(outputs, [(picture.height, picture.width)], threshold=threshold)[0]
        rendered = out / f"{path.stem}_det.png"
        save_detections(rendered, picture, found["boxes"], found["labels"], found["scores"], names)
        detections = [{"image_id": image_id, "file_name": str(path), "category_id": int(label),
                       "category": names.get(int(label), str(int(label))),
                       "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)], "score": round(float(score), 4)}
                      for (x0, y0, x1, y1), label, score in zip(found["boxes"].tolist(), found["labels"].tolist(),
                                                                found["scores"].tolist())]
        results += detections
        records.append({"image": str(path), "rendered": str(rendered), "detections": detections})
    json_path = out / PREDICTIONS
    write_json_atomic(json_path, results, indent=1)
    return {"predictions": records, "skipped": skipped, "json": str(json_path)}


__all__ = ["PREDICTIONS", "eval_detect", "image_paths", "load_detector", "predict_detect", "recipe_of"]
