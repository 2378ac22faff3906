"""Batching differently sized detection images: zero padding at the bottom / right plus a padding mask."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict[str, Any]]], size_divisibility: int = 1
                      ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    """[(image (3, H_i, W_i), target), ...] -> (images, mask, targets).

    images: (B, 3, H, W) with H, W the largest sides in the batch rounded up to a multiple of
    size_divisibility, each image at the top-left and zeros elsewhere; mask: (B, H, W) bool, True on padding
    (the DETR convention); targets: the B targets, unchanged (their boxes stay relative to each image's own
    unpadded size). Use ``functools.partial(collate_detection, size_divisibility=32)`` as a collate_fn.
    """
    if not batch:
        raise ValueError("collate_detection got an empty batch")
    if size_divisibility < 1:
        raise ValueError(f"size_divisibility must be >= 1, got {size_divisibility}")
    images = [image for image, _ in batch]
    channels = {image.shape[0] for image in images}
    if len(channels) != 1 or any(image.ndim != 3 for image in images):
        raise ValueError("collate_detection needs (C, H, W) images with one channel count, got shapes "
                         f"{[tuple(image.shape) for image in images]}")
    k = size_divisibility
    height = -(-max(image.shape[1] for image in images) // k) * k
    width = -(-max(image.shape[2] for image in images) // k) * k
    padded = images[0].new_zeros(len(images), images[0].shape[0], height, width)  # (B, C, H, W)
    mask = torch.ones(len(images), height, width, dtype=torch.bool)  # (B, H, W)
    for i, image in enumerate(images):
        h, w = image.shape[1:]
        padded[i, :, :h, :w] = image
        mask[i, :h, :w] = False
    return padded, mask, [target for _, target in batch]
