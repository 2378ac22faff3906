"""Joint image + mask transforms for semantic segmentation (mmseg's ADE20K pipeline, written for torch tensors).

Every transform is called as `t(image, mask)` and returns both: image (3, H, W) uint8 tensor (float after
`Normalize`), mask (H, W) uint8 tensor (int64 after `Normalize`). Geometric transforms move both together, the
mask always with nearest-neighbour sampling; photometric ones touch the image only. Randomness comes from
torch's global RNG, so the engine's seeding makes runs repeatable.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from vistra.data.cls_transforms import IMAGENET_MEAN, IMAGENET_STD

IGNORE_INDEX = 255
Pair = tuple[torch.Tensor, torch.Tensor]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _chance(p: float) -> bool:
    return p > 0 and torch.rand(()).item() < p


def to_tensors(image: Image.Image | torch.Tensor, mask: np.ndarray | torch.Tensor) -> Pair:
    """PIL RGB image -> (3, H, W) uint8 tensor; (H, W) array -> (H, W) uint8 tensor. Tensors pass through."""
    if isinstance(image, Image.Image):
        image = TF.pil_to_tensor(image.convert("RGB"))
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    return image, mask


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of the largest resize keeping the aspect ratio that fits in scale = (long, short) edges."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


class SegCompose:
    """Apply transforms in order to (image, mask); the inputs may be a PIL image and a numpy mask."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image, mask) -> Pair:
        image, mask = to_tensors(image, mask)
        for t in self.transforms:
            image, mask = t(image, mask)
        return image, mask


class RandomResize:
    """Resize keeping the aspect ratio to fit `scale` (long, short) times a ratio drawn from `ratio_range`.

    `interpolation` is for the image ("bilinear" default); the mask uses nearest. With `resize_mask=False` only
    the image is resized (evaluation: predictions are resized back and scored at the mask's own size).
    """

    def __init__(self, scale: int | Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0),
                 interpolation: str = "bilinear", resize_mask: bool = True):
        self.scale = _pair(scale)
        self.ratio_range = tuple(ratio_range)
        self.interpolation = InterpolationMode(interpolation)
        self.resize_mask = resize_mask

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        ratio = _uniform(*self.ratio_range)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        size = list(rescale_size(image.shape[-2], image.shape[-1], scale))
        image = TF.resize(image, size, interpolation=self.interpolation, antialias=True)
        if self.resize_mask:
            mask = TF.resize(mask[None], size, interpolation=InterpolationMode.NEAREST_EXACT)[0]
        return image, mask


class RandomCrop:
    """Random crop of at most `crop_size` (h, w). With cat_max_ratio < 1, up to 10 crops are tried until no
    single class covers more than that fraction of the crop's labelled pixels (mmseg)."""

    def __init__(self, crop_size: int | Sequence[int] = 512, cat_max_ratio: float = 1.0,
                 ignore_index: int = IGNORE_INDEX):
        self.crop_size = _pair(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _window(self, height: int, width: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.crop_size[0], height), min(self.crop_size[1], width)
        top = int(torch.randint(0, height - ch + 1, ()).item())
        left = int(torch.randint(0, width - cw + 1, ()).item())
        return top, left, ch, cw

    def _balanced(self, mask: torch.Tensor) -> bool:
        labels = mask[mask != self.ignore_index]
        counts = torch.bincount(labels.long().flatten())
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        top, left, ch, cw = self._window(*mask.shape)
        if self.cat_max_ratio < 1:
            for _ in range(9):
                if self._balanced(mask[top: top + ch, left: left + cw]):
                    break
                top, left, ch, cw = self._window(*mask.shape)
        return image[:, top: top + ch, left: left + cw], mask[top: top + ch, left: left + cw]


class RandomFlip:
    """Horizontal flip of image and mask with probability p."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        if _chance(self.p):
            return image.flip(-1), mask.flip(-1)
        return image, mask


class PhotometricDistortion:
    """mmseg's photometric distortion on the image only, each step with probability 0.5: brightness (+-delta
    in 0..255), contrast (x factor), then saturation and hue (delta in OpenCV's 0..180 hue units); contrast goes
    before or after saturation/hue at random."""

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18):
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def _contrast(self, x: torch.Tensor) -> torch.Tensor:
        return x * _uniform(*self.contrast_range) if _chance(0.5) else x

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        x = image.float() / 255  # (3, H, W) in [0, 1]
        if _chance(0.5):
            x = x + _uniform(-self.brightness_delta, self.brightness_delta) / 255
        contrast_first = _chance(0.5)
        if contrast_first:
            x = self._contrast(x)
        x = x.clamp(0, 1)
        if _chance(0.5):
            x = TF.adjust_saturation(x, _uniform(*self.saturation_range))
        if _chance(0.5):
            x = TF.adjust_hue(x, _uniform(-self.hue_delta, self.hue_delta) / 180)
        if not contrast_first:
            x = self._contrast(x)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), mask


class Normalize:
    """Image uint8 -> float (x / 255 - mean) / std; mask -> int64."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        return (image.float() / 255 - self.mean) / self.std, mask.long()


class Pad:
    """Pad bottom / right up to `size` (h, w): the image with 0, the mask with the ignore index."""

    def __init__(self, size: int | Sequence[int], ignore_index: int = IGNORE_INDEX):
        self.size = _pair(size)
        self.ignore_index = ignore_index

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> Pair:
        pad_h, pad_w = max(self.size[0] - mask.shape[0], 0), max(self.size[1] - mask.shape[1], 0)
        if pad_h == 0 and pad_w == 0:
            return image, mask
        image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=0)
        mask = torch.nn.functional.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image, mask


def build_seg_train_transform(crop_size: int | Sequence[int] = 512, scale: int | Sequence[int] = (2048, 512),
                              ratio_range: Sequence[float] = (0.5, 2.0), cat_max_ratio: float = 0.75,
                              hflip: float = 0.5, photometric: bool = True, mean: Sequence[float] = IMAGENET_MEAN,
                              std: Sequence[float] = IMAGENET_STD, interpolation: str = "bilinear") -> SegCompose:
    """Training pipeline: random resize (ratio_range x scale) -> random crop (cat_max_ratio) -> flip ->
    photometric distortion -> normalize -> pad to crop_size with ignore. Output: (3, h, w) float, (h, w) int64
    with (h, w) = crop_size."""
    steps = [RandomResize(scale, ratio_range, interpolation), RandomCrop(crop_size, cat_max_ratio), RandomFlip(hflip)]
    if photometric:
        steps.append(PhotometricDistortion())
    steps += [Normalize(mean, std), Pad(crop_size)]
    return SegCompose(steps)


def build_seg_eval_transform(scale: int | Sequence[int] | None = (2048, 512), mean: Sequence[float] = IMAGENET_MEAN,
                             std: Sequence[float] = IMAGENET_STD) -> SegCompose:
    """Evaluation pipeline: resize the image (not the mask) to fit `scale` (None: keep the size) -> normalize.
    Output: (3, h, w) float image, (H, W) int64 mask at the original size."""
    steps = [] if scale is None else [RandomResize(scale, (1.0, 1.0), resize_mask=False)]
    return SegCompose(steps + [Normalize(mean, std)])
