"""Test-time inference of a segmentation model: whole image, or sliding window with overlap averaging.

Both return logits resized (bilinearly) to `out_size`, the original image size, so predictions are scored
against the untouched ground-truth masks.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Size = int | Sequence[int]


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _resize(logits: torch.Tensor, out_size: Size | None) -> torch.Tensor:
    if out_size is None or tuple(logits.shape[-2:]) == _pair(out_size):
        return logits
    return F.interpolate(logits, size=_pair(out_size), mode="bilinear", align_corners=False)


def whole_inference(model: nn.Module, images: torch.Tensor, out_size: Size | None = None) -> torch.Tensor:
    """images (B, 3, H, W) -> logits (B, K, *out_size) (default (H, W)) from one forward pass."""
    return _resize(model(images), out_size)


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of length `crop` every `stride` along `size`; the last one ends at the edge."""
    count = max(size - crop + stride - 1, 0) // stride + 1
    return sorted({min(i * stride, max(size - crop, 0)) for i in range(count)})


def slide_inference(model: nn.Module, images: torch.Tensor, crop_size: Size, stride: Size,
                    out_size: Size | None = None) -> torch.Tensor:
    """images (B, 3, H, W) -> logits (B, K, *out_size) (default (H, W)).

    Windows of `crop_size` (h, w) every `stride` (h, w) cover the image (the last ones flush with the border;
    an image smaller than the crop is run whole); logits of overlapping windows are averaged per pixel.
    """
    (ch, cw), (sh, sw) = _pair(crop_size), _pair(stride)
    if min(ch, cw, sh, sw) < 1:
        raise ValueError(f"crop_size {crop_size} and stride {stride} must be positive")
    height, width = images.shape[-2:]
    total = count = None
    for y in window_starts(height, ch, sh):
        for x in window_starts(width, cw, sw):
            crop = images[..., y: y + ch, x: x + cw]  # (B, 3, <=ch, <=cw)
            logits = model(crop)  # (B, K, h_crop, w_crop)
            if total is None:
                total = images.new_zeros(images.shape[0], logits.shape[1], height, width)  # (B, K, H, W)
                count = images.new_zeros(1, 1, height, width)
            total[..., y: y + ch, x: x + cw] += logits
            count[..., y: y + ch, x: x + cw] += 1
    return _resize(total / count, out_size)


def segment(model: nn.Module, images: torch.Tensor, mode: str = "whole", crop_size: Size | None = None,
            stride: Size | None = None, out_size: Size | None = None) -> torch.Tensor:
    """Dispatch to whole_inference (mode "whole") or slide_inference (mode "slide"); returns logits."""
    if mode == "whole":
        return whole_inference(model, images, out_size)
    if mode == "slide":
        if crop_size is None or stride is None:
            raise ValueError("mode 'slide' needs crop_size and stride")
        return slide_inference(model, images, crop_size, stride, out_size)
    raise ValueError(f"unknown inference mode {mode!r}; use 'whole' or 'slide'")
