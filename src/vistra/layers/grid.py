"""Token sequences <-> 2-D grids without copies.

Tokens (B, H*W, C) laid out row-major are, byte for byte, an NHWC image. Viewing them as a (B, C, H, W) tensor
in channels-last memory costs nothing, and PyTorch's convolutions, pooling and interpolation keep channels-last
on output, so flattening a conv's output back to tokens is a view as well. The old transpose-reshape round trip
copied the activations twice per convolution and handed non-contiguous tokens to the next Linear.
"""
from __future__ import annotations

import torch


def tokens_to_grid(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Tokens (B, H*W, C) -> grid (B, C, H, W) in channels-last memory (a view when x is contiguous)."""
    B, N, C = x.shape
    if N != H * W:
        raise ValueError(f"{N} tokens do not form a {H}x{W} grid")
    return x.reshape(B, H, W, C).permute(0, 3, 1, 2)  # (B, C, H, W), strides (HWC, 1, WC, C)


def grid_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """Grid (B, C, H, W) -> tokens (B, H*W, C); contiguous without a copy when x is channels-last."""
    return x.flatten(2).transpose(1, 2)  # (B, H*W, C)
