"""A small built-in detection dataset in COCO format: scikit-learn's handwritten digits scattered on canvases."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistra.data.digits import _stratified_val_mask
from vistra.data.errors import DataError

MARKER = "vistra digits-det dataset"
STAGING = ".staging"  # written first, then renamed into place
SPLITS = ("train", "val")
# Category id = the digit itself, so labels need no mapping and num_classes = max id + 1 = 10 wastes no slot.
CATEGORIES = [{"id": d, "name": str(d), "supercategory": "digit"} for d in range(10)]
MAX_IOU = 0.3  # a new digit's box may overlap an earlier one by at most this IoU ...
MAX_COVER = 0.4  # ... and cover at most this fraction of it (later digits are painted on top)


def make_digits_det(out_dir: str | os.PathLike, n_train: int = 1000, n_val: int = 200, seed: int = 0,
                    canvas: tuple[int, int] = (128, 320), digit_size: tuple[int, int] = (16, 96),
                    max_digits: int = 8) -> dict[str, Any]:
    """Write ``out_dir/{train,val}/<id>.png`` and ``out_dir/annotations/instances_{train,val}.json``.

    Every image is a canvas of random width and height in ``canvas`` (pixels, so the aspect ratio varies)
    filled with a two-colour gradient plus Gaussian noise, with 1 to ``max_digits`` digits painted on it: real
    8x8 scans from ``sklearn.datasets.load_digits()`` upsampled bicubically to ``digit_size`` pixels (a random
    height / width ratio of 0.8..1.25), each in a random ink colour that contrasts with the background and at a
    random opacity. Digits may overlap (box IoU at most 0.3, an earlier digit at most 40 % covered). Boxes are
    tight around each digit's visible ink. Train and val canvases use disjoint sets of scans (a stratified 20 %
    go to val), so validation measures reading unseen handwriting.

    Categories: ids 0..9 named "0".."9" (the id is the digit), so a DETR-style model takes num_classes=10.
    Image ids and annotation ids start at 1. Image i of a split depends only on (seed, split, i), so the same
    seed gives the same files everywhere, and a smaller n_train gives a prefix of a larger one. Re-running
    replaces a previous output cleanly; a non-empty folder not made by this function is refused (DataError).

    Returns a summary: out_dir, seed, num_train, num_val, boxes_train, boxes_val, boxes_per_class.
    """
    from sklearn.datasets import load_digits  # lazy: scikit-learn is only needed here

    if n_train < 1 or n_val < 0 or max_digits < 1:
        raise ValueError(f"need n_train >= 1, n_val >= 0, max_digits >= 1; got {n_train}, {n_val}, {max_digits}")
    if not 8 <= digit_size[0] <= digit_size[1] <= canvas[0] <= canvas[1]:
        raise ValueError(f"need 8 <= digit_size[0] <= digit_size[1] <= canvas[0] <= canvas[1], got digit_size="
                         f"{digit_size}, canvas={canvas}")
    out = Path(out_dir)
    _check_out_dir(out)
    digits = load_digits()
    glyphs = digits.images.astype(np.float32) / 16.0  # (N, 8, 8) ink in [0, 1]
    labels = digits.target.astype(int)  # (N,)
    val_mask = _stratified_val_mask(labels, 0.2, seed)
    pools = {"train": np.flatnonzero(~val_mask), "val": np.flatnonzero(val_mask)}

    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "annotations").mkdir(parents=True)
    counts: dict[str, int] = {}
    per_class = [0] * 10
    for code, (split, n) in enumerate(zip(SPLITS, (n_train, n_val))):
        (staging / split).mkdir()
        images, annotations = [], []
        for index in range(n):
            rng = np.random.default_rng([seed, code, index])
            picture, boxes = _draw(rng, glyphs, labels, pools[split], canvas, digit_size, max_digits)
            image_id = index + 1
            name = f"{image_id:06d}.png"
            Image.fromarray(picture).save(staging / split / name)
            images.append({"id": image_id, "file_name": name, "width": picture.shape[1], "height": picture.shape[0]})
            for label, (x, y, w, h) in boxes:
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
                per_class[label] += 1
        coco = {"info": {"description": f"{MARKER}, split {split}, seed {seed}"}, "licenses": [],
                "images": images, "annotations": annotations, "categories": CATEGORIES}
        (staging / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        counts[split] = len(annotations)
    for name in (*SPLITS, "annotations"):
        shutil.rmtree(out / name, ignore_errors=True)
        (staging / name).rename(out / name)
    staging.rmdir()

    summary = {"out_dir": str(out), "seed": seed, "num_train": n_train, "num_val": n_val,
               "boxes_train": counts["train"], "boxes_val": counts["val"],
               "boxes_per_class": {str(d): per_class[d] for d in range(10)}}
    (out / "README.txt").write_text(_readme(summary, canvas, digit_size, max_digits))
    return summary


def _draw(rng: np.random.Generator, glyphs: np.ndarray, labels: np.ndarray, pool: np.ndarray,
          canvas: tuple[int, int], digit_size: tuple[int, int], max_digits: int
          ) -> tuple[np.ndarray, list[tuple[int, list[int]]]]:
    """One canvas (H, W, 3) uint8 and its [(label, [x, y, w, h]), ...] boxes."""
    width, height = (int(v) for v in rng.integers(canvas[0], canvas[1] + 1, size=2))
    picture = _background(rng, height, width)  # (H, W, 3) float
    boxes: list[tuple[int, list[int]]] = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        index = int(rng.choice(pool))
        size = int(rng.integers(digit_size[0], min(digit_size[1], width, height) + 1))
        dh = min(height, max(8, round(size * rng.uniform(0.8, 1.25))))
        ink = np.asarray(Image.fromarray(glyphs[index]).resize((size, dh), Image.Resampling.BICUBIC)).clip(0, 1)
        rows, cols = np.nonzero(ink > 0.25)  # visible ink of the (dh, size) glyph
        if not len(rows):
            continue
        box = _place(rng, width, height, size, dh, (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1), boxes)
        if box is None:
            continue
        x, y = box[0] - int(cols.min()), box[1] - int(rows.min())  # top-left of the glyph on the canvas
        alpha = (ink * rng.uniform(0.6, 1.0))[..., None]  # (dh, size, 1)
        region = picture[y:y + dh, x:x + size]  # (dh, size, 3)
        colour = _contrasting_colour(rng, region.mean(axis=(0, 1)))
        picture[y:y + dh, x:x + size] = region * (1 - alpha) + colour * alpha
        boxes.append((int(labels[index]), [box[0], box[1], box[2] - box[0], box[3] - box[1]]))
    return picture.clip(0, 255).round().astype(np.uint8), boxes


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear gradient between two random colours at a random angle, plus Gaussian noise: (H, W, 3) float."""
    start, end = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)  # (H, W) in [0, 1]
    picture = start + (end - start) * t[..., None]
    return picture + rng.normal(0.0, rng.uniform(2, 20), size=picture.shape)


def _contrasting_colour(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """A random RGB colour whose mean brightness differs from `behind`'s by at least 80 (of 255)."""
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if abs(colour.mean() - behind.mean()) >= 80:
            return colour
    return np.zeros(3) if behind.mean() > 127 else np.full(3, 255.0)


def _place(rng: np.random.Generator, width: int, height: int, w: int, h: int, ink: tuple, boxes: list
           ) -> list[int] | None:
    """Canvas xyxy of the ink box for a glyph of (h, w) pixels placed at random, or None if it would hide others."""
    for _ in range(30):
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        new = [x + int(ink[0]), y + int(ink[1]), x + int(ink[2]), y + int(ink[3])]
        if all(_overlap_ok(new, old) for _, old in boxes):
            return new
    return None


def _overlap_ok(new: list[int], old_xywh: list[int]) -> bool:
    ox, oy, ow, oh = old_xywh
    iw = max(0, min(new[2], ox + ow) - max(new[0], ox))
    ih = max(0, min(new[3], oy + oh) - max(new[1], oy))
    inter = iw * ih
    union = (new[2] - new[0]) * (new[3] - new[1]) + ow * oh - inter
    return inter / union <= MAX_IOU and inter / (ow * oh) <= MAX_COVER


def _check_out_dir(out: Path) -> None:
    """Refuse to write into a file, or into a non-empty folder that is not a previous output."""
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    if not out.exists() or all(p.name == STAGING for p in out.iterdir()):  # new, empty or a crashed run
        out.mkdir(parents=True, exist_ok=True)
        return
    readme = out / "README.txt"
    if not (readme.is_file() and readme.read_text(errors="replace").startswith(MARKER)):
        raise DataError(out, "folder is not empty and was not made by make_digits_det; choose a new or empty folder")


def _readme(summary: dict[str, Any], canvas: tuple[int, int], digit_size: tuple[int, int], max_digits: int) -> str:
    return f"""{MARKER}
Made by vistra.data.make_digits_det (or `vistra data make digits-det OUT`); re-run to recreate.

Layout (COCO): train/*.png, val/*.png, annotations/instances_train.json, annotations/instances_val.json.
Images: {summary['num_train']} train and {summary['num_val']} val canvases of {canvas[0]}..{canvas[1]} pixels a side
(gradient + noise background) with 1..{max_digits} digits each, {digit_size[0]}..{digit_size[1]} pixels tall,
random ink colours and opacity, partly overlapping; {summary['boxes_train']} train and {summary['boxes_val']} val boxes.
Categories: ids 0..9 named "0".."9" (the id is the digit): train DETR-style models with num_classes=10.
Digits: scikit-learn's bundled copy of the UCI ML hand-written digits (8x8 scans, CC BY 4.0); train and val use
disjoint scans (stratified 20 % to val). Seed {summary['seed']}.
"""
