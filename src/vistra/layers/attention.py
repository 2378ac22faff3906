"""Multi-head self-attention (ViT) and spatial-reduction attention (PVT v1, PVTv2 and its linear variant)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistra.layers.grid import grid_to_tokens, tokens_to_grid
from vistra.layers.linear import Linear


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0, need_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over heads.

    q: (B, h, Nq, d), k/v: (B, h, Nk, d) -> out (B, h, Nq, d) and, if asked, the weights (B, h, Nq, Nk).
    The fused kernel is used unless the weights are wanted.
    """
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p), None
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (B, h, Nq, Nk)
    weights = scores.softmax(dim=-1)
    out = F.dropout(weights, dropout_p) @ v if dropout_p > 0 else weights @ v
    return out, weights


class Attention(nn.Module):
    """ViT multi-head self-attention with a fused qkv projection (timm / official names: qkv, proj)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, N, C) -> (B, N, C), and the attention weights (B, heads, N, N) when need_weights."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, N, d)
        out, weights = attend(q, k, v, self.attn_drop if self.training else 0.0, need_weights)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out)), weights

    def forward_leading(self, x: torch.Tensor, num_queries: int) -> torch.Tensor:
        """The outputs of the first num_queries tokens only: x (B, N, C) -> (B, num_queries, C).

        Keys and values come from every token; queries, the attention rows and proj are computed for the leading
        tokens alone (ViT's class token in the last block), which is what forward gives for them.
        """
        B, N, C = x.shape
        h, d = self.num_heads, C // self.num_heads
        bias = self.qkv.bias
        q = F.linear(x[:, :num_queries], self.qkv.weight[:C], None if bias is None else bias[:C])  # (B, n, C)
        kv = F.linear(x, self.qkv.weight[C:], None if bias is None else bias[C:])  # (B, N, 2C)
        k, v = kv.reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, N, d)
        q = q.reshape(B, num_queries, h, d).transpose(1, 2)  # (B, h, n, d)
        out, _ = attend(q, k, v, self.attn_drop if self.training else 0.0)
        out = out.transpose(1, 2).reshape(B, num_queries, C)
        return self.proj_drop(self.proj(out))


class SpatialReductionAttention(nn.Module):
    """PVT attention: keys and values come from a spatially reduced copy of the tokens.

    sr_ratio > 1: Conv(kernel=stride=sr_ratio) + LayerNorm (PVT v1, PVTv2).
    linear=True: adaptive average pool to 7x7 + 1x1 conv + LayerNorm + GELU (PVTv2 "li" variants).
    Official names: q, kv, sr, norm, proj.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
        linear: bool = False,
        pool_size: int = 7,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.linear = linear
        self.q = Linear(dim, dim, bias=qkv_bias)
        self.kv = Linear(dim, dim * 2, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if linear:
            self.pool = nn.AdaptiveAvgPool2d(pool_size)
            self.sr = nn.Conv2d(dim, dim, kernel_size=1, stride=1)
            self.norm = nn.LayerNorm(dim)
            self.act = nn.GELU()
        elif sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def reduce(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """Tokens (B, H*W, C) -> the reduced tokens keys and values are computed from (B, M, C)."""
        if not self.linear and self.sr_ratio == 1:
            return x
        grid = tokens_to_grid(x, H, W)  # (B, C, H, W), channels-last view of the tokens
        if self.linear:
            grid = self.sr(self.pool(grid))  # (B, C, 7, 7)
        else:
            grid = self.sr(grid)  # (B, C, H/R, W/R)
        reduced = self.norm(grid_to_tokens(grid))  # (B, M, C)
        return self.act(reduced) if self.linear else reduced

    def forward(self, x: torch.Tensor, H: int, W: int, need_weights: bool = False):
        """x (B, N, C) on an H x W grid -> (B, N, C), and weights (B, heads, N, M) when need_weights."""
        B, N, C = x.shape
        d = C // self.num_heads
        q = self.q(x).reshape(B, N, self.num_heads, d).transpose(1, 2)  # (B, h, N, d)
        kv = self.kv(self.reduce(x, H, W))  # (B, M, 2C)
        k, v = kv.reshape(B, -1, 2, self.num_heads, d).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, h, M, d)
        out, weights = attend(q, k, v, self.attn_drop if self.training else 0.0, need_weights)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out)), weights
