"""Write scikit-learn's bundled handwritten digits as an ImageFolder classification dataset."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistra.data.errors import DataError

MARKER = "vistra digits-cls dataset"
STAGING = ".staging"  # written first, then renamed into place
CLASSES = tuple(str(d) for d in range(10))


def make_digits_cls(
    out_dir: str | os.PathLike, img_size: int = 32, val_fraction: float = 0.2, seed: int = 0
) -> dict[str, Any]:
    """Write ``out_dir/{train,val}/<0..9>/<index>.png`` from ``sklearn.datasets.load_digits()``.

    The 1797 real 8x8 digit scans (values 0..16, ink bright on black) are scaled to 0..255 and
    upsampled bicubically to ``img_size`` x ``img_size`` single-channel (L) PNGs, named by their
    index in the scikit-learn array. The split is stratified: in every class
    ``round(n_class * val_fraction)`` images go to ``val``, chosen by a hash of (seed, index), so
    the same seed gives the same files on every machine and library version. ``README.txt`` and
    ``classes.txt`` are written too. Re-running replaces a previous output cleanly; a non-empty
    folder that was not made by this function is refused with DataError.

    Returns a summary dict: out_dir, img_size, seed, val_fraction, classes, num_train, num_val,
    total, train_per_class, val_per_class.
    """
    from sklearn.datasets import load_digits  # lazy: scikit-learn is only needed here

    if img_size < 1 or not 0 <= val_fraction < 1:
        raise ValueError(f"need img_size >= 1 and 0 <= val_fraction < 1, got {img_size}, {val_fraction}")
    out = Path(out_dir)
    _check_out_dir(out)
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    labels = digits.target.astype(int)  # (N,)
    val = _stratified_val_mask(labels, val_fraction, seed)  # (N,) bool

    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = staging / ("val" if val[index] else "train") / CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        big = Image.fromarray(image).resize((img_size, img_size), Image.Resampling.BICUBIC)
        big.save(folder / f"{index:04d}.png")
    for split in ("train", "val"):
        shutil.rmtree(out / split, ignore_errors=True)
        (staging / split).rename(out / split)
    staging.rmdir()

    summary = {
        "out_dir": str(out),
        "img_size": img_size,
        "seed": seed,
        "val_fraction": val_fraction,
        "classes": list(CLASSES),
        "num_train": int((~val).sum()),
        "num_val": int(val.sum()),
        "total": len(labels),
        "train_per_class": {c: int(((labels == i) & ~val).sum()) for i, c in enumerate(CLASSES)},
        "val_per_class": {c: int(((labels == i) & val).sum()) for i, c in enumerate(CLASSES)},
    }
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (out / "README.txt").write_text(_readme(summary))
    return summary


def _stratified_val_mask(labels: np.ndarray, val_fraction: float, seed: int) -> np.ndarray:
    """(N,) bool, True for validation: per class, the round(n * fraction) lowest hashes of (seed, index)."""
    val = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        ranked = sorted(members, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
        val[ranked[: round(len(members) * val_fraction)]] = True
    return val


def _check_out_dir(out: Path) -> None:
    """Refuse to write into a file, or into a non-empty folder that is not a previous output."""
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    if not out.exists() or all(p.name == STAGING for p in out.iterdir()):  # new, empty or a crashed run
        out.mkdir(parents=True, exist_ok=True)
        return
    readme = out / "README.txt"
    if not (readme.is_file() and readme.read_text(errors="replace").startswith(MARKER)):
        raise DataError(out, "folder is not empty and was not made by make_digits_cls; choose a new or empty folder")


def _readme(summary: dict[str, Any]) -> str:
    return f"""{MARKER}
Made by vistra.data.make_digits_cls (or `vistra data make digits-cls OUT`); re-run to recreate.

Source: scikit-learn's bundled copy of the UCI ML hand-written digits (optdigits test set),
{summary['total']} real scans of 8x8 pixels with values 0..16, licensed CC BY 4.0.
Images: {summary['img_size']}x{summary['img_size']} grayscale PNGs (bicubic upsampling, ink bright on black),
named by their index in sklearn.datasets.load_digits().images.
Layout: train/<class>/<index>.png and val/<class>/<index>.png, classes 0..9 (classes.txt).
Split: stratified, val_fraction={summary['val_fraction']}, seed={summary['seed']}:
{summary['num_train']} train and {summary['num_val']} val images.
"""
