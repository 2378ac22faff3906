"""Detection transforms on torchvision.transforms.v2: the image and its boxes move together.

A transform is called as ``t(image, target)`` with a PIL image (or (3, H, W) uint8 tensor) and a target from
CocoDetection ("boxes" (n, 4) absolute xyxy, "labels", optionally "iscrowd" / "area" / "image_id" /
"orig_size"), and returns:
- image: (3, H', W') float32, normalised with mean / std;
- target: "boxes" (m, 4) float32 **normalised cxcywh** relative to (H', W') (what the criterion takes),
  "labels", "iscrowd" (m,) kept in step with the boxes, "area" (m,) the box areas in output pixels,
  "size" (2,) = (H', W'), and "orig_size" / "image_id" passed through.

Boxes are clipped to the image after the geometric steps; boxes left with no width or height (cropped away)
are dropped, and counted in the transform's ``dropped`` attribute (per process: DataLoader workers each count
their own). Any image size works, 1x1 included: a resize never makes a side shorter than one pixel, and never
makes the longer side more than MAX_ASPECT times the target size (see ShortestSideResize).

The DETR recipe (``build_det_train_transform()`` with its defaults): horizontal flip, then with equal chance
either a resize of the shorter side to one of 480..800 (step 32, longer side at most 1333), or a resize to
400/500/600, a random crop of 384..600 pixels a side and the multi-scale resize. Validation: shorter side 800,
longer at most 1333. Every size is a parameter, so small datasets can train at small sizes.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from vistra.data.cls_transforms import IMAGENET_MEAN, IMAGENET_STD, MAX_ASPECT

DETR_SCALES = tuple(range(480, 801, 32))  # 480, 512, ..., 800
DETR_MAX_SIZE = 1333
DETR_CROP_RESIZE = (400, 500, 600)
DETR_CROP_SIZE = (384, 600)
PER_BOX_KEYS = ("labels", "iscrowd", "area")  # target entries with one value per box


class ShortestSideResize(v2.RandomShortestSize):
    """torchvision's RandomShortestSize (shorter side to one of `min_size`, longer side at most `max_size`), except
    that no side becomes shorter than one pixel, and that without a max_size the longer side is capped at
    MAX_ASPECT times the drawn size (so only images longer than MAX_ASPECT:1 resize differently: a 1 x 3000 image
    does not grow to 400 x 1200000). Same random draw as torchvision."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        size = self.min_size[int(torch.randint(len(self.min_size), ()))]
        cap = self.max_size if self.max_size is not None else MAX_ASPECT * size
        scale = min(size / min(height, width), cap / max(height, width))
        return {"size": (max(1, int(height * scale)), max(1, int(width * scale)))}


class RandomSizeCrop(v2.Transform):
    """Crop a random region whose width and height are drawn uniformly from [min_size, max_size] (clipped to the
    image), at a uniformly random position (the official DETR RandomSizeCrop)."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        if not 1 <= min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _image_size(flat_inputs)
        crop_h = _randint(min(self.min_size, height), min(self.max_size, height))
        crop_w = _randint(min(self.min_size, width), min(self.max_size, width))
        return {"top": _randint(0, height - crop_h), "left": _randint(0, width - crop_w),
                "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.crop, inpt, **params)


class DetectionTransform:
    """(image, target) -> (normalised float image, target with normalised cxcywh boxes); see the module doc.

    Args:
        geometric: a v2 transform applied to the image and a tv_tensors.BoundingBoxes of the target boxes.
        mean, std: per-channel normalisation of the [0, 1] image.
        per_box_keys: target entries with one value per box, kept in step with the boxes.
    """

    def __init__(self, geometric: v2.Transform | None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, per_box_keys: Sequence[str] = PER_BOX_KEYS):
        self.geometric = geometric
        self.mean, self.std = list(mean), list(std)
        self.per_box_keys = tuple(dict.fromkeys(per_box_keys))  # each once, in order
        self.dropped = 0

    def __call__(self, image: Image.Image | torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        image = tv_tensors.Image(TF.pil_to_tensor(image) if isinstance(image, Image.Image) else image)  # (3, H, W)
        height, width = image.shape[-2:]
        target = dict(target)
        boxes = target.get("boxes", torch.zeros(0, 4))
        target["boxes"] = tv_tensors.BoundingBoxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                                   format="XYXY", canvas_size=(height, width))
        if self.geometric is not None:
            image, target = self.geometric(image, target)
        image, target = self._finish(image, target)
        return image, target

    def _finish(self, image: torch.Tensor, target: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        height, width = image.shape[-2:]
        boxes = TF.clamp_bounding_boxes(target["boxes"]).as_subclass(torch.Tensor)  # (n, 4) xyxy pixels
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        x0, y0, x1, y1 = (boxes / scale).unbind(-1)
        normalised = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)  # (n, 4) cxcywh
        keep = (normalised[:, 2] > 0) & (normalised[:, 3] > 0)  # (n,): also drops widths that underflow to 0
        self.dropped += int((~keep).sum())
        boxes = boxes[keep]
        for key in self.per_box_keys:
            if key in target:
                target[key] = torch.as_tensor(target[key])[keep]
        target["area"] = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (m,) output pixels
        target["boxes"] = normalised[keep]  # (m, 4)
        target["size"] = torch.tensor([height, width], dtype=torch.int64)
        target.setdefault("orig_size", target["size"].clone())
        pixels = TF.to_dtype(image.as_subclass(torch.Tensor), torch.float32, scale=True)  # (3, H, W) in [0, 1]
        return TF.normalize(pixels, self.mean, self.std), target


def build_det_train_transform(scales: Sequence[int] = DETR_SCALES, max_size: int | None = DETR_MAX_SIZE,
                              crop_resize: Sequence[int] | None = DETR_CROP_RESIZE,
                              crop_size: Sequence[int] = DETR_CROP_SIZE, hflip: float = 0.5,
                              mean: Sequence[float] = IMAGENET_MEAN,
                              std: Sequence[float] = IMAGENET_STD) -> DetectionTransform:
    """DETR's training augmentation (see the module doc). crop_resize None: no crop branch (multi-scale only)."""
    steps: list[v2.Transform] = []
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    multi_scale = ShortestSideResize(list(scales), max_size=max_size)
    if crop_resize:
        cropped = v2.Compose([ShortestSideResize(list(crop_resize)), RandomSizeCrop(*crop_size),
                              ShortestSideResize(list(scales), max_size=max_size)])
        steps.append(v2.RandomChoice([multi_scale, cropped], p=[0.5, 0.5]))
    else:
        steps.append(multi_scale)
    return DetectionTransform(v2.Compose(steps), mean, std)


def build_det_eval_transform(size: int | None = 800, max_size: int | None = DETR_MAX_SIZE,
                             mean: Sequence[float] = IMAGENET_MEAN,
                             std: Sequence[float] = IMAGENET_STD) -> DetectionTransform:
    """Validation transform: shorter side resized to size (longer side at most max_size); size None: no resize."""
    geometric = ShortestSideResize([size], max_size=max_size) if size else None
    return DetectionTransform(geometric, mean, std)


def _image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for item in flat_inputs:
        if isinstance(item, (tv_tensors.Image, Image.Image)):
            height, width = TF.get_size(item)
            return int(height), int(width)
    raise TypeError("found no image among the transform's inputs")


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high], from torch's global RNG (seeded by the engine)."""
    return int(torch.randint(low, high + 1, ()))
