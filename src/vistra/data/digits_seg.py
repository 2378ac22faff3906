"""Write a small semantic segmentation dataset made of scikit-learn's handwritten digits on noisy canvases."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistra.data.errors import DataError
from vistra.data.seg_dataset import write_mask

MARKER = "vistra digits-seg dataset"
CLASSES = ("background",) + tuple(str(d) for d in range(10))
INK_THRESHOLD = 96  # upsampled digit pixels brighter than this (0..255) are ink


def make_digits_seg(out_dir: str | os.PathLike, seed: int = 0, n_train: int = 600, n_val: int = 100,
                    min_size: int = 64, max_size: int = 128, max_digits: int = 4,
                    digit_sizes: tuple[int, int] = (20, 48)) -> dict[str, Any]:
    """Write `out_dir/{train,val}/{images,masks}/<index>.png`, classes.txt and README.txt.

    Each canvas is H x W with H, W drawn in [min_size, max_size], a random dark colour plus noise. 1..max_digits
    real 8x8 scans from `sklearn.datasets.load_digits()` are upsampled (bicubic) to a random square size in
    `digit_sizes`, tinted with a random bright colour and pasted without overlapping. The mask (mode 'P', VOC
    palette) holds digit + 1 on the ink pixels (upsampled value > INK_THRESHOLD), 0 elsewhere: 11 classes.
    Train canvases use the first 80% of the scans and val canvases the rest, so val digits are unseen.
    A non-empty folder not made by this function is refused with DataError; re-running replaces the output.

    Returns a summary: out_dir, seed, classes, num_train, num_val, pixels_per_class (train).
    """
    from sklearn.datasets import load_digits  # lazy: scikit-learn is only needed here

    out = Path(out_dir)
    _check_out_dir(out)
    digits = load_digits()
    scans = (digits.images * (255.0 / 16.0)).astype(np.float32)  # (N, 8, 8) in 0..255
    cut = int(len(scans) * 0.8)
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(CLASSES), dtype=np.int64)
    for split, n, pool in (("train", n_train, np.arange(cut)), ("val", n_val, np.arange(cut, len(scans)))):
        shutil.rmtree(out / split, ignore_errors=True)
        (out / split / "images").mkdir(parents=True)
        (out / split / "masks").mkdir(parents=True)
        for index in range(n):
            image, mask = _canvas(rng, scans, digits.target, pool, min_size, max_size, max_digits, digit_sizes)
            Image.fromarray(image).save(out / split / "images" / f"{index:05d}.png")
            write_mask(out / split / "masks" / f"{index:05d}.png", mask)
            if split == "train":
                counts += np.bincount(mask.ravel(), minlength=len(CLASSES))
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (out / "README.txt").write_text(f"{MARKER}\nMade by vistra.data.make_digits_seg (or `vistra data make "
                                    f"digits-seg OUT`), seed={seed}: {n_train} train and {n_val} val canvases.\n"
                                    "Layout: {train,val}/images/*.png (RGB) + {train,val}/masks/*.png (palette "
                                    "indices: 0 background, d + 1 for digit d); classes.txt.\nSource: scikit-"
                                    "learn's copy of the UCI ML hand-written digits (CC BY 4.0).\n")
    return {"out_dir": str(out), "seed": seed, "classes": list(CLASSES), "num_train": n_train, "num_val": n_val,
            "pixels_per_class": counts.tolist()}


def _canvas(rng: np.random.Generator, scans: np.ndarray, labels: np.ndarray, pool: np.ndarray, min_size: int,
            max_size: int, max_digits: int, digit_sizes: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W, 3) uint8 image and its (H, W) uint8 mask."""
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    background = rng.uniform(0, 70, size=3)
    image = background + rng.normal(0, 12, size=(height, width, 3))  # (H, W, 3) float
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(int(rng.integers(1, max_digits + 1))):
        size = int(rng.integers(digit_sizes[0], min(digit_sizes[1], height, width) + 1))
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        if mask[top: top + size, left: left + size].any():
            continue  # would overlap a digit already there: skip it
        pick = int(rng.choice(pool))
        glyph = np.asarray(Image.fromarray(scans[pick]).resize((size, size), Image.Resampling.BICUBIC))
        glyph = glyph.clip(0, 255) / 255.0  # (size, size) in [0, 1]
        colour = rng.uniform(150, 255, size=3)
        patch = image[top: top + size, left: left + size]
        image[top: top + size, left: left + size] = patch * (1 - glyph[..., None]) + colour * glyph[..., None]
        ink = glyph * 255 > INK_THRESHOLD
        mask[top: top + size, left: left + size][ink] = labels[pick] + 1
    return image.clip(0, 255).astype(np.uint8), mask


def _check_out_dir(out: Path) -> None:
    """Refuse to write into a file, or into a non-empty folder that is not a previous output."""
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        readme = out / "README.txt"
        if not (readme.is_file() and readme.read_text(errors="replace").startswith(MARKER)):
            raise DataError(out, "folder is not empty and was not made by make_digits_seg; "
                                 "choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
