"""Semantic segmentation datasets: image + index-mask pairs in the ADE20K, Pascal VOC or a plain folder layout."""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistra.data.errors import DataError
from vistra.data.image_folder import IMG_EXTENSIONS
from vistra.data.image_io import check_pixel_limit, read_error_reason, read_image
from vistra.data.paths import inside_root

IGNORE_INDEX = 255
LAYOUTS = ("ade20k", "voc", "folder")
_ADE_SPLITS = {"train": "training", "val": "validation", "training": "training", "validation": "validation"}
_MASK_MODES = ("P", "L", "1", "I;16", "I;16L", "I;16B", "I")


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read an index mask PNG -> (H, W) uint8 class indices.

    Palette ('P') images give their palette indices, grayscale ('L', '1', 16-bit) their values (which must
    fit in 0..255). RGB(A) files whose three channels are equal are taken as grayscale; real colour masks raise
    DataError, since a colour cannot be turned into a class index without the dataset's palette. Masks over the
    pixel limit of read_image are refused the same way, before decoding.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused by check_pixel_limit
            with Image.open(path) as image:
                check_pixel_limit(path, image, "mask")
                image.load()
                mode, values = image.mode, np.asarray(image)
    except DataError:
        raise
    except Exception as error:  # decoders raise many types on corrupt data
        raise DataError(path, f"cannot read mask ({read_error_reason(error)})") from error
    if mode in ("RGB", "RGBA"):
        rgb = values[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            colours = len(np.unique(rgb.reshape(-1, 3), axis=0))
            raise DataError(path, f"mask is an {mode} colour image ({colours} colours); masks must be "
                                  "single-channel PNGs of class indices (mode 'P' or 'L', 255 = ignore): convert "
                                  "it by mapping each colour to its class index and saving mode 'P' or 'L'")
        values, mode = rgb[..., 0], "L"
    if mode not in _MASK_MODES:
        raise DataError(path, f"unsupported mask mode {mode!r}; save masks as 'P' or 'L' PNGs of class indices")
    if values.max(initial=0) > 255 or values.min(initial=0) < 0:
        raise DataError(path, f"mask values span {values.min()}..{values.max()}; class indices must fit in 0..255")
    return values.astype(np.uint8)


def voc_palette(num_colours: int = 256) -> list[int]:
    """The Pascal VOC colour map as a flat [r, g, b, ...] list (class 0 black, 255 = (224, 224, 192))."""
    palette = []
    for i in range(num_colours):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def write_mask(path: str | os.PathLike, mask: np.ndarray, palette: list[int] | None = None) -> None:
    """Save an (H, W) uint8 index mask as a palette ('P') PNG; the colours default to `voc_palette()`."""
    indexed = Image.fromarray(np.asarray(mask, dtype=np.uint8))  # mode L; putpalette makes it P
    indexed.putpalette(palette if palette is not None else voc_palette())
    indexed.save(path)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMG_EXTENSIONS)


def _pair_by_stem(image_dir: Path, mask_dir: Path) -> list[tuple[Path, Path]]:
    """Every image in image_dir with the mask of the same stem in mask_dir (.png preferred)."""
    masks: dict[str, Path] = {}
    for path in _images_in(mask_dir) if mask_dir.is_dir() else []:
        if path.stem not in masks or path.suffix.lower() == ".png":
            masks[path.stem] = path
    pairs = []
    for image in _images_in(image_dir):
        if image.stem not in masks:
            raise DataError(image, f"no mask for this image: expected {mask_dir / (image.stem + '.png')}")
        pairs.append((image, masks[image.stem]))
    return pairs


def detect_layout(root: Path, split: str) -> str:
    """Name of the layout found in root: "ade20k", "voc" or "folder"; DataError when none matches."""
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return "ade20k"
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    if (root / split / "images").is_dir():
        return "folder"
    raise DataError(root, "cannot tell the dataset layout; expected images/ + annotations/ (ADE20K), "
                          "JPEGImages/ + SegmentationClass/ + ImageSets/Segmentation/ (VOC) or "
                          f"{split}/images/ + {split}/masks/ (folder)")


def find_pairs(root: Path, split: str, layout: str, allow_outside_root: bool = False) -> list[tuple[Path, Path]]:
    """(image, mask) paths of `split` in `layout`, sorted; DataError for missing folders or files, and for names in
    a VOC split list that leave root (unless allow_outside_root)."""
    if layout == "ade20k":
        sub = _ADE_SPLITS.get(split, split)
        image_dir = root / "images" / sub
        if not image_dir.is_dir():
            raise DataError(image_dir, f"no such folder (ADE20K layout, split {split!r})")
        return _pair_by_stem(image_dir, root / "annotations" / sub)
    if layout == "voc":
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            raise DataError(listing, f"no such file (VOC layout, split {split!r})")
        stems = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        return [(inside_root(root, f"JPEGImages/{s}.jpg", listing, "image", allow_outside_root),
                 inside_root(root, f"SegmentationClass/{s}.png", listing, "mask", allow_outside_root)) for s in stems]
    if layout == "folder":
        image_dir = root / split / "images"
        if not image_dir.is_dir():
            raise DataError(image_dir, f"no such folder (folder layout, split {split!r})")
        return _pair_by_stem(image_dir, root / split / "masks")
    raise ValueError(f"unknown layout {layout!r}; use 'auto' or one of {LAYOUTS}")


def read_class_names(root: str | os.PathLike) -> list[str] | None:
    """Class names from root/classes.txt (one per line), or None when there is no such file."""
    path = Path(root) / "classes.txt"
    if not path.is_file():
        return None
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class SegmentationDataset:
    """(image, mask) pairs for semantic segmentation.

    Layouts ("auto" picks the first that matches):
      - "ade20k": images/{training,validation}/*.jpg + annotations/{training,validation}/*.png
        (split "train" / "val" map to "training" / "validation");
      - "voc": JPEGImages/*.jpg + SegmentationClass/*.png, listed in ImageSets/Segmentation/<split>.txt;
      - "folder": <split>/images/* + <split>/masks/<same stem>.png.
    Masks are index PNGs ('P' or 'L'); 255 = ignore. With `reduce_zero_label` (ADE20K) label 0 ("other")
    becomes 255 and every other label goes down by one. Each sample is checked when loaded: a mask whose size
    differs from its image, or (when `num_classes` is known: the argument, else root/classes.txt) a label
    >= num_classes other than 255, raises DataError naming the file. Names in a VOC split list that leave root
    (absolute, or climbing out with ``..``) raise DataError unless `allow_outside_root`.

    `dataset[i]` -> `transform(image, mask)`, or without a transform (PIL RGB image, (H, W) uint8 array).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", layout: str = "auto",
                 reduce_zero_label: bool = False, transform: Callable[[Image.Image, np.ndarray], Any] | None = None,
                 num_classes: int | None = None, allow_outside_root: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "no such dataset folder")
        self.split = split
        self.layout = detect_layout(self.root, split) if layout == "auto" else layout
        self.reduce_zero_label = reduce_zero_label
        self.transform = transform
        self.classes = read_class_names(self.root)
        self.num_classes = num_classes if num_classes is not None else (len(self.classes) if self.classes else None)
        self.samples = find_pairs(self.root, split, self.layout, allow_outside_root)
        if not self.samples:
            raise DataError(self.root, f"split {split!r} ({self.layout} layout) has no images")

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """Sample `index` before the transform: (PIL RGB image, (H, W) uint8 mask), checked."""
        image_path, mask_path = self.samples[index]
        image, mask = read_image(image_path), read_mask(mask_path)
        if mask.shape != (image.height, image.width):
            raise DataError(mask_path, f"mask size {mask.shape[1]}x{mask.shape[0]} differs from the size "
                                       f"{image.width}x{image.height} of its image {image_path}")
        if self.reduce_zero_label:
            mask = np.where((mask == 0) | (mask == IGNORE_INDEX), IGNORE_INDEX, mask - 1).astype(np.uint8)
        self._check_labels(mask, mask_path)
        return image, mask

    def _check_labels(self, mask: np.ndarray, path: Path) -> None:
        if self.num_classes is None:
            return
        values = np.unique(mask)
        bad = values[(values >= self.num_classes) & (values != IGNORE_INDEX)]
        if bad.size:
            shift = " after reduce_zero_label" if self.reduce_zero_label else ""
            raise DataError(path, f"label values {bad.tolist()}{shift} are >= num_classes={self.num_classes} "
                                  f"(valid: 0..{self.num_classes - 1}, {IGNORE_INDEX} = ignore)")

    def __getitem__(self, index: int) -> Any:
        image, mask = self.load(index)
        return self.transform(image, mask) if self.transform is not None else (image, mask)
