"""Absolute position embeddings at other resolutions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resample_abs_pos_embed(
    pos_embed: torch.Tensor,
    new_hw: tuple[int, int],
    old_hw: tuple[int, int] | None = None,
    num_prefix_tokens: int = 1,
    mode: str = "bicubic",
    antialias: bool = True,
) -> torch.Tensor:
    """Resize the grid part of a (1, P + H*W, D) position embedding to (1, P + H'*W', D).

    The first num_prefix_tokens entries (class token) are kept as they are; the grid is interpolated in 2-D
    (bicubic with antialiasing for ViT, as timm; plain bilinear for PVT v1, as the official code).
    old_hw defaults to a square grid.
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    if old_hw is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"position embedding has {n} grid entries, not a square; pass old_hw")
        old_hw = (side, side)
    # Exported graphs always resize (to the same size that changes nothing), so they take any size; comparing
    # the sizes first would fix the export to the example's.
    if not torch.compiler.is_exporting() and tuple(old_hw) == tuple(new_hw):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_hw[0], old_hw[1], dim).permute(0, 3, 1, 2)  # (1, D, H, W)
    grid = F.interpolate(grid.float(), size=tuple(new_hw), mode=mode, antialias=antialias).to(pos_embed.dtype)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_hw[0] * new_hw[1], dim)  # (1, H'*W', D)
    return torch.cat([prefix, grid], dim=1)
