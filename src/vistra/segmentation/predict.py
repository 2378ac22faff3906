"""Segment image files with a trained model (`vistra predict` for segmentation checkpoints): mask PNGs, overlays."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistra.atomic_io import write_json_atomic
from vistra.data.errors import DataError
from vistra.data.image_folder import IMG_EXTENSIONS
from vistra.data.image_io import read_image
from vistra.data.seg_dataset import voc_palette, write_mask
from vistra.data.seg_transforms import build_seg_eval_transform
from vistra.segmentation.evaluate import load_segmenter, recipe_for
from vistra.segmentation.inference import segment
from vistra.segmentation.render import overlay

PREDICTIONS = "predictions.json"


def image_paths(images: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, folders searched recursively for images (sorted); DataError for a missing path."""
    paths = []
    for item in images:
        item = Path(item)
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(item, "no such image file or folder")
    return paths


@torch.no_grad()
def predict_segment(images: Iterable[str | os.PathLike], checkpoint: str | os.PathLike,
                    out_dir: str | os.PathLike, settings: Mapping[str, Any] | None = None, device: str = "auto",
                    alpha: float = 0.5) -> list[dict[str, Any]]:
    """Segment image files (folders are searched recursively) with a trained model.

    Writes, per image, `<stem>_mask.png` (palette PNG of class indices, full size) and `<stem>_overlay.png`
    (class colours blended over the image at `alpha`; the "background" class, when class 0 is named so, left
    unpainted), plus predictions.json listing every image with its files and the fraction of pixels of each
    predicted class. settings: SegRecipe fields (e.g. eval_mode="slide"). Returns that list.
    """
    from vistra.engine.trainer import resolve_device

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha {alpha} must be in [0, 1]")
    model, info = load_segmenter(checkpoint, resolve_device(device))
    recipe = recipe_for(info, settings)
    transform = build_seg_eval_transform(recipe.eval_scale)
    crop, stride = recipe.window()
    classes, palette = info["classes"], voc_palette()
    background = 0 if classes and classes[0] == "background" else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for path in image_paths(images):
        picture = read_image(path)
        pixels, _ = transform(picture, np.zeros((picture.height, picture.width), np.uint8))  # (3, h, w)
        logits = segment(model, pixels[None].to(next(model.parameters()).device), recipe.eval_mode, crop, stride,
                         out_size=(picture.height, picture.width))  # (1, K, H, W)
        mask = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()  # (H, W)
        mask_path, overlay_path = out / f"{path.stem}_mask.png", out / f"{path.stem}_overlay.png"
        write_mask(mask_path, mask, palette)
        overlay(picture, mask, palette, alpha, background).save(overlay_path)
        counts = np.bincount(mask.ravel(), minlength=len(classes))
        records.append({"image": str(path), "mask": str(mask_path), "overlay": str(overlay_path),
                        "classes": {classes[i]: float(c / mask.size) for i, c in enumerate(counts) if c}})
    write_json_atomic(out / PREDICTIONS, records)
    return records
