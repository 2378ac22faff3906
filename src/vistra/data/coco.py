"""COCO-format detection datasets: checked loading of the json, images with their box targets.

Category ids are used as labels exactly as they appear in the file (the official DETR semantics), so a model
needs ``num_classes > max category id``; ``CocoDetection.num_classes`` gives that number.

Bad input is repaired where the intent is clear and refused otherwise, and everything done is counted once in
``dataset.report`` and one summary line printed at load:
- boxes with zero or negative width/height (or non-finite numbers) are dropped ("degenerate");
- boxes partly outside the image are clipped to it; boxes entirely outside it are dropped ("outside");
- images without annotations are kept (their targets are empty);
- annotations whose category id is not in ``categories``, or whose image id is not in ``images``, and
  malformed bboxes raise DataError naming the file and the ids, or are dropped and counted with skip_bad;
- image files that do not exist raise DataError naming the path, or the image is left out with skip_bad (its
  boxes are dropped and counted, "missing_file_boxes");
- an unreadable json raises DataError with the json error position.

Every annotation in the file is counted exactly once: kept (``report["boxes"]``, crowd and clipped boxes included)
or dropped as degenerate, outside, unknown_category, unknown_image, malformed or missing_file_boxes. Transforms may
drop more boxes later (cropped away), and count them themselves (see det_transforms).

A ``file_name`` that is absolute or climbs out of ``img_folder`` with ``..`` is refused with DataError (even with
skip_bad), unless ``allow_outside_root=True``.

EXIF orientation: COCO's ``width`` / ``height`` are those of the image as displayed, so images are read upright
(EXIF orientation applied) and boxes are taken in that upright frame. The one exception is a file whose stored
(un-rotated) size matches the json and whose upright size does not: the annotations were evidently made on the
stored pixels, so the image is used as stored. Entries without width / height get the upright size.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from vistra.data.errors import DataError
from vistra.data.image_io import read_image, to_rgb
from vistra.data.paths import inside_root

# Report keys, in the order the summary line lists them, with what it says about them (singular, plural).
_PROBLEMS = (
    ("clipped", "box clipped", "boxes clipped"),
    ("degenerate", "degenerate box dropped", "degenerate boxes dropped"),
    ("outside", "box outside the image dropped", "boxes outside the image dropped"),
    ("unknown_category", "box of an unknown category dropped", "boxes of unknown categories dropped"),
    ("unknown_image", "box of an unknown image dropped", "boxes of unknown images dropped"),
    ("malformed", "malformed annotation dropped", "malformed annotations dropped"),
    ("missing_files", "missing image file skipped", "missing image files skipped"),
    ("missing_file_boxes", "box of a missing image file dropped", "boxes of missing image files dropped"),
    ("no_annotations", "image without annotations", "images without annotations"),
)
_REPORT_KEYS = ("images", "boxes", "crowd", *(key for key, _, _ in _PROBLEMS), "unreadable")


class CocoDetection:
    """Images and box targets of a COCO-format json (instances_*.json layout), read through pycocotools.

    Args:
        img_folder: folder the images' ``file_name`` entries are relative to.
        ann_file: the COCO json.
        transforms: callable ``(PIL image, target) -> (image, target)`` (see det_transforms), or None.
        skip_bad: drop bad annotations and leave out missing / unreadable images (counted in ``report``)
            instead of raising DataError.
        include_crowd: also put ``iscrowd=1`` boxes into the targets. Off by default: like the official DETR,
            crowd regions are no training targets; evaluation still sees them through ``dataset.coco``.
        quiet: do not print the summary line.
        allow_outside_root: accept file names that leave img_folder (absolute, or climbing out with ``..``).

    ``dataset[i]`` -> (image, target): the RGB PIL image (or what transforms make of it) and a dict with
    "boxes" (n, 4) float32 absolute xyxy, "labels" (n,) int64 category ids, "image_id" int, "iscrowd" (n,)
    int64, "area" (n,) float32, "orig_size" and "size" (2,) int64 (height, width).

    Attributes:
        coco: the pycocotools COCO object of the *cleaned* annotations (what evaluation compares against).
        ids: the image ids, in file order (images whose files are missing left out with skip_bad).
        categories: {id: name}.
        report: counts, every key present: images, boxes (kept, crowd included), crowd, clipped, degenerate,
            outside, unknown_category, unknown_image, malformed, missing_files, missing_file_boxes (boxes of the
            images left out for missing files), no_annotations, and unreadable (images found unreadable by
            __getitem__ with skip_bad so far, in this process).
        summary: the line printed at load.
    """

    def __init__(self, img_folder: str | os.PathLike, ann_file: str | os.PathLike,
                 transforms: Callable[[Any, dict], tuple[Any, dict]] | None = None, skip_bad: bool = False,
                 include_crowd: bool = False, quiet: bool = False, allow_outside_root: bool = False):
        self.img_folder = Path(img_folder)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.skip_bad = skip_bad
        self.include_crowd = include_crowd
        self.allow_outside_root = allow_outside_root
        self.report: dict[str, int] = Counter()
        self._bad: dict[int, str] = {}  # image id -> why it could not be read
        self._missing: set[int] = set()  # ids of images whose files do not exist (skip_bad)
        data = _read_json(self.ann_file)
        self.categories = self._check_categories(data)
        images = self._check_images(data)
        annotations = self._clean_annotations(data, images)
        self.ids = [i for i in images if i not in self._missing]
        self.coco = _make_coco({**data, "images": [images[i] for i in self.ids], "annotations": annotations})
        with_boxes = {a["image_id"] for a in annotations}
        self.report["no_annotations"] = sum(1 for i in self.ids if i not in with_boxes)
        self.report["images"] = len(self.ids)
        self.report["boxes"] = len(annotations)
        self.report["crowd"] = sum(1 for a in annotations if a["iscrowd"])
        self.report = {key: self.report[key] for key in _REPORT_KEYS}  # every key, zeros included, fixed order
        self.summary = self._summary()
        if not quiet:
            print(self.summary, file=sys.stderr)

    # ------------------------------------------------------------------------------------------ access
    @property
    def num_classes(self) -> int:
        """max category id + 1: the num_classes a DETR-style model needs for these labels."""
        return max(self.categories, default=-1) + 1

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        """(image, target) of the index-th image; with skip_bad an unreadable image gives the next readable one."""
        if not self.skip_bad:
            return self._load(self.ids[index])
        self.ids[index]  # IndexError like a list
        n = len(self.ids)
        for offset in range(n):
            image_id = self.ids[(index + offset) % n]
            if image_id in self._bad:
                continue
            try:
                return self._load(image_id)
            except DataError as error:
                self._bad[image_id] = str(error)
                self.report["unreadable"] += 1
        raise DataError(self.img_folder, f"no readable image among the {n} of {self.ann_file.name}")

    def image_path(self, image_id: int) -> Path:
        return self.img_folder / self.coco.imgs[image_id]["file_name"]

    def target(self, image_id: int) -> dict[str, Any]:
        """The untransformed target of an image (see the class doc), without reading the image."""
        info = self.coco.imgs[image_id]
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if self.include_crowd or not a["iscrowd"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)  # (n, 4) xywh
        boxes[:, 2:] += boxes[:, :2]  # -> xyxy
        size = torch.tensor([info["height"], info["width"]], dtype=torch.int64)
        return {
            "boxes": boxes,
            "labels": torch.tensor([a["category_id"] for a in anns], dtype=torch.int64),
            "image_id": int(image_id),
            "iscrowd": torch.tensor([a["iscrowd"] for a in anns], dtype=torch.int64),
            "area": torch.tensor([a["area"] for a in anns], dtype=torch.float32),
            "orig_size": size,
            "size": size.clone(),
        }

    def _load(self, image_id: int) -> tuple[Any, dict[str, Any]]:
        info = self.coco.imgs[image_id]
        image = _read_oriented(self.image_path(image_id), info["width"], info["height"], self.ann_file)
        target = self.target(image_id)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    # -------------------------------------------------------------------------------------- checking
    def _fail(self, problem: str) -> None:
        raise DataError(self.ann_file, problem)

    def _check_categories(self, data: dict) -> dict[int, str]:
        cats = data.get("categories")
        if not isinstance(cats, list) or not cats:
            self._fail("has no 'categories' list; a detection json needs [{'id': ..., 'name': ...}, ...]")
        out = {}
        for cat in cats:
            if not isinstance(cat, dict) or not _is_int(cat.get("id")) or cat["id"] < 0:
                self._fail(f"category {cat!r} has no non-negative integer 'id'")
            out[int(cat["id"])] = str(cat.get("name", cat["id"]))
        return out

    def _check_images(self, data: dict) -> dict[int, dict]:
        """{id: image entry with width/height filled in}; ids of missing files go to self._missing."""
        entries = data.get("images")
        if not isinstance(entries, list):
            self._fail("has no 'images' list")
        images: dict[int, dict] = {}
        for entry in entries:
            if not (isinstance(entry, dict) and _is_int(entry.get("id")) and isinstance(entry.get("file_name"), str)):
                self._fail(f"image entry {str(entry)[:80]} needs an integer 'id' and a 'file_name' string")
            if entry["id"] in images:
                self._fail(f"image id {entry['id']} appears twice")
            path = inside_root(self.img_folder, entry["file_name"], self.ann_file,
                               f"image id {entry['id']}: file_name", self.allow_outside_root)
            if not path.is_file():
                if not self.skip_bad:
                    raise DataError(path, f"image file does not exist (listed in {self.ann_file} as image id "
                                          f"{entry['id']}; pass skip_bad to leave such images out)")
                self._missing.add(entry["id"])
            elif not all(_is_int(entry.get(k)) and entry[k] > 0 for k in ("width", "height")):
                entry = {**entry, **dict(zip(("width", "height"), _oriented_size(path)))}
            images[int(entry["id"])] = entry
        self.report["missing_files"] = len(self._missing)
        return images

    def _clean_annotations(self, data: dict, images: dict[int, dict]) -> list[dict]:
        anns = data.get("annotations", [])
        if not isinstance(anns, list):
            self._fail("'annotations' is not a list")
        unknown_cats: Counter[Any] = Counter()
        unknown_imgs: Counter[Any] = Counter()
        malformed: list[Any] = []
        cleaned, next_id = [], 1 + max((a["id"] for a in anns if isinstance(a, dict) and _is_int(a.get("id"))),
                                       default=0)
        for ann in anns:
            if not isinstance(ann, dict) or not _is_bbox(ann.get("bbox")):
                malformed.append(_hashable(ann.get("id") if isinstance(ann, dict) else ann))
                continue
            if not _is_int(ann.get("category_id")) or ann["category_id"] not in self.categories:
                unknown_cats[_hashable(ann.get("category_id"))] += 1
                continue
            if not _is_int(ann.get("image_id")) or ann["image_id"] not in images:
                unknown_imgs[_hashable(ann.get("image_id"))] += 1
                continue
            if ann["image_id"] in self._missing:
                self.report["missing_file_boxes"] += 1
                continue
            image = images[ann["image_id"]]
            box = _clip(ann["bbox"], image["width"], image["height"])
            if box is None:
                self.report["degenerate"] += 1
                continue
            if box == "outside":
                self.report["outside"] += 1
                continue
            clipped = box != [float(v) for v in ann["bbox"]]
            self.report["clipped"] += clipped
            area = ann.get("area")
            if clipped or not isinstance(area, (int, float)) or not area > 0:
                area = box[2] * box[3]
            if not _is_int(ann.get("id")):
                ann, next_id = {**ann, "id": next_id}, next_id + 1
            cleaned.append({**ann, "bbox": box, "area": float(area), "iscrowd": int(bool(ann.get("iscrowd", 0)))})
        self._refuse_or_count("unknown_category", unknown_cats, "category ids",
                              f"not among the categories {sorted(self.categories)[:20]}")
        self._refuse_or_count("unknown_image", unknown_imgs, "image ids", "not among the images")
        self._refuse_or_count("malformed", Counter(malformed), "ids", "have no bbox [x, y, width, height] of numbers")
        if len({a["id"] for a in cleaned}) != len(cleaned):
            self._fail("annotation ids are not unique")
        return cleaned

    def _refuse_or_count(self, key: str, found: Counter, what: str, problem: str) -> None:
        if not found:
            return
        if not self.skip_bad:
            shown = ", ".join(map(str, list(found)[:10])) + (", ..." if len(found) > 10 else "")
            self._fail(f"{sum(found.values())} annotations with {what} {shown}: {problem} "
                       "(fix the file, or pass skip_bad to drop them)")
        self.report[key] = sum(found.values())

    def _summary(self) -> str:
        r = self.report
        text = f"{self.ann_file.name}: {r['images']} images, {r['boxes']} boxes"
        if r["crowd"]:
            text += f" ({r['crowd']} crowd)"
        problems = [f"{r[key]} {one if r[key] == 1 else many}" for key, one, many in _PROBLEMS if r[key]]
        return text + ("; " + ", ".join(problems) if problems else "")


def build_coco(root: str | os.PathLike | None, split: str = "train", *, img_folder: str | os.PathLike | None = None,
               ann_file: str | os.PathLike | None = None, year: str | None = "2017", **kwargs) -> CocoDetection:
    """The CocoDetection of one split from the standard layout, or from explicit paths.

    Layouts tried under root, first match wins: ``{split}{year}/`` + ``annotations/instances_{split}{year}.json``
    (COCO), then ``{split}/`` + ``annotations/instances_{split}.json`` (what make_digits_det writes).
    img_folder / ann_file replace either part. kwargs go to CocoDetection.
    """
    if img_folder is None or ann_file is None:
        if root is None:
            raise ValueError("build_coco needs root, or both img_folder and ann_file")
        root = Path(root)
        names = ([f"{split}{year}"] if year else []) + [split]
        candidates = [(Path(img_folder or root / n), Path(ann_file or root / "annotations" / f"instances_{n}.json"))
                      for n in names]
        found = [(i, a) for i, a in candidates if i.is_dir() and a.is_file()]
        if not found:
            tried = " or ".join(f"{i}/ with {a}" for i, a in candidates)
            raise DataError(root, f"no {split} split found: expected {tried}")
        img_folder, ann_file = found[0]
    return CocoDetection(img_folder, ann_file, **kwargs)


# ------------------------------------------------------------------------------------------- helpers
def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, "annotation file does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read annotation file ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(path, f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno} "
                              f"(char {err.pos})") from None
    except RecursionError:
        raise DataError(path, "not usable JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object with images/annotations/categories, got {type(data).__name__}")
    return data


def _make_coco(data: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress
        coco.createIndex()
    return coco


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _hashable(value: Any) -> Any:
    """`value` itself when it can be a dict key, else its repr (ids in a broken json may be lists or dicts)."""
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _is_bbox(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def _clip(bbox: list, width: int, height: int) -> list[float] | str | None:
    """COCO [x, y, w, h] clipped to the image -> new [x, y, w, h]; None if degenerate, "outside" if nothing is left."""
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))
    if x1 <= x0 or y1 <= y0:
        return "outside"
    return [x0, y0, x1 - x0, y1 - y0]


def _oriented_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image as read_image returns it (EXIF rotation applied), from the header."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            swapped = image.getexif().get(0x0112) in (5, 6, 7, 8)  # orientation tags that turn by 90 degrees
    except Exception as err:  # noqa: BLE001  (decoders raise many types)
        raise DataError(path, f"cannot read image header ({err})") from None
    return (height, width) if swapped else (width, height)


def _read_oriented(path: Path, width: int, height: int, ann_file: Path) -> Image.Image:
    """The image the annotations were made on: upright per EXIF, or as stored when only that matches the size."""
    image = read_image(path)
    if image.size == (width, height):
        return image
    with Image.open(path) as raw:  # the stored pixels, EXIF orientation not applied
        if raw.size == (width, height):
            raw.load()
            return to_rgb(raw)
    raise DataError(path, f"image is {image.width}x{image.height} pixels but {ann_file} says {width}x{height}")
