"""Patch embeddings: non-overlapping (ViT, PVT v1) and overlapping (PVTv2)."""
from __future__ import annotations

import torch
from torch import nn

from vistra.layers.grid import grid_to_tokens


class PatchEmbed(nn.Module):
    """Conv2d(kernel=stride=patch) -> tokens, optionally followed by LayerNorm (PVT v1). Official names proj, norm."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int, norm: bool = False):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """x (B, C, H, W) -> tokens (B, H/p * W/p, D) and the grid size (H/p, W/p)."""
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is not divisible by the patch size {p}")
        x = self.proj(x)  # (B, D, H/p, W/p)
        hw = (x.shape[2], x.shape[3])
        return self.norm(grid_to_tokens(x)), hw


class OverlapPatchEmbed(nn.Module):
    """PVTv2 overlapping patch embedding: Conv2d(k, stride, padding=k//2) -> LayerNorm."""

    def __init__(self, patch_size: int, stride: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """x (B, C, H, W) -> tokens (B, H'*W', D) and the grid size (H', W')."""
        x = self.proj(x)  # (B, D, H', W'); channels-last when x was (a later stage's grid view)
        hw = (x.shape[2], x.shape[3])
        return self.norm(grid_to_tokens(x)), hw
