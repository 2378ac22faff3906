"""Pyramid Vision Transformer v1 (Wang et al., ICCV 2021) and PVTv2 (Wang et al., 2022).

Module names follow the official whai362/PVT code (patch_embed1, block1.0.attn.q, norm1, ...), so the
official checkpoints load as they are. Four stages at strides 4, 8, 16, 32.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from vistra.layers import (
    ConvMlp,
    DropPath,
    Mlp,
    OverlapPatchEmbed,
    PatchEmbed,
    SpatialReductionAttention,
    drop_path_rates,
)
from vistra.layers.grid import tokens_to_grid
from vistra.layers.position import resample_abs_pos_embed
from vistra.registry import register_model

STRIDES = (4, 8, 16, 32)


@dataclass
class PVTConfig:
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    embed_dims: list[int] = field(default_factory=lambda: [64, 128, 320, 512])
    num_heads: list[int] = field(default_factory=lambda: [1, 2, 5, 8])
    mlp_ratios: list[float] = field(default_factory=lambda: [8, 8, 4, 4])
    depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    sr_ratios: list[int] = field(default_factory=lambda: [8, 4, 2, 1])
    qkv_bias: bool = True
    linear: bool = False  # PVTv2 linear spatial-reduction attention ("li")
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0


class PVTBlock(nn.Module):
    """x += SRA(LN(x)); x += FFN(LN(x)). v2=True uses the convolutional FFN."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, sr_ratio: int, c: PVTConfig, drop_path: float,
                 v2: bool):
        super().__init__()
        self.v2 = v2
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SpatialReductionAttention(dim, num_heads, c.qkv_bias, c.attn_drop_rate, c.drop_rate, sr_ratio,
                                              linear=c.linear)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = ConvMlp(dim, hidden, c.drop_rate, linear=c.linear) if v2 else Mlp(dim, hidden, drop=c.drop_rate)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """x (B, N, C) on an H x W grid (N may include a class token when sr_ratio is 1) -> (B, N, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x), H, W)[0])
        y = self.mlp(self.norm2(x), H, W) if self.v2 else self.mlp(self.norm2(x))
        return x + self.drop_path(y)


def _stages(c: PVTConfig, v2: bool) -> list[nn.ModuleList]:
    rates = drop_path_rates(c.drop_path_rate, sum(c.depths))
    stages, start = [], 0
    for s in range(4):
        stages.append(nn.ModuleList(
            PVTBlock(c.embed_dims[s], c.num_heads[s], c.mlp_ratios[s], c.sr_ratios[s], c, rates[start + j], v2)
            for j in range(c.depths[s])
        ))
        start += c.depths[s]
    return stages


def _init_weights(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, std=(2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _PyramidBase(nn.Module):
    """What PVT v1 and v2 share: the classifier API and feature_info."""

    def _init_common(self, c: PVTConfig) -> None:
        self.config = c
        self.num_classes = c.num_classes
        self.num_features = c.embed_dims[-1]
        self.head = nn.Linear(c.embed_dims[-1], c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.feature_info = [
            {"num_chs": c.embed_dims[s], "reduction": STRIDES[s], "module": f"block{s + 1}"} for s in range(4)
        ]

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def forward_pyramid(self, x: torch.Tensor, out_indices: Sequence[int] = (0, 1, 2, 3)) -> list[torch.Tensor]:
        """(B, 3, H, W) -> maps (B, C_s, H/stride_s, W/stride_s) of the stages in out_indices."""
        maps = self._run_stages(x, last=max(out_indices))
        return [maps[i] for i in out_indices]


class PyramidVisionTransformerV2(_PyramidBase):
    """PVTv2: overlapping patch embedding, convolutional FFN, (linear) spatial-reduction attention, no position
    embedding, a LayerNorm after each stage. Classifies from the mean of the last stage's tokens."""

    arch = "pvt_v2"

    def __init__(self, config: PVTConfig):
        super().__init__()
        c = config
        self._init_common(c)
        for s, blocks in enumerate(_stages(c, v2=True)):
            in_chans = c.in_chans if s == 0 else c.embed_dims[s - 1]
            patch, stride = (7, 4) if s == 0 else (3, 2)
            setattr(self, f"patch_embed{s + 1}", OverlapPatchEmbed(patch, stride, in_chans, c.embed_dims[s]))
            setattr(self, f"block{s + 1}", blocks)
            setattr(self, f"norm{s + 1}", nn.LayerNorm(c.embed_dims[s], eps=1e-6))
        _init_weights(self)

    def no_weight_decay(self) -> set[str]:
        return set()

    def _stage(self, s: int, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Stage s (0-based): (B, C_in, H, W) -> normalised tokens (B, H'*W', C_s) and H', W'."""
        x, (h, w) = getattr(self, f"patch_embed{s + 1}")(x)  # (B, N, C_s)
        for blk in getattr(self, f"block{s + 1}"):
            x = blk(x, h, w)
        return getattr(self, f"norm{s + 1}")(x), h, w

    def _run_stages(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        maps = []
        for s in range(last + 1):
            tokens, h, w = self._stage(s, x)
            x = tokens_to_grid(tokens, h, w)  # (B, C_s, h, w), channels-last view for the next stage
            maps.append(x.contiguous())  # the pyramid maps stay plain contiguous NCHW
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> last-stage tokens (B, H/32 * W/32, C_4)."""
        for s in range(3):
            tokens, h, w = self._stage(s, x)
            x = tokens_to_grid(tokens, h, w)  # (B, C_s, h, w), channels-last view: no copy
        return self._stage(3, x)[0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, N, C_4) -> logits (B, num_classes) from their mean."""
        return self.head(x.mean(dim=1))


class PyramidVisionTransformer(_PyramidBase):
    """PVT v1: non-overlapping patch embedding (4x4, then 2x2) with a learned position embedding per stage, a
    class token joined at the last stage, one final LayerNorm. Classifies from the class token."""

    arch = "pvt"

    def __init__(self, config: PVTConfig):
        super().__init__()
        c = config
        self._init_common(c)
        self.grid_sizes = []
        for s, blocks in enumerate(_stages(c, v2=False)):
            in_chans = c.in_chans if s == 0 else c.embed_dims[s - 1]
            patch = 4 if s == 0 else 2
            side = c.img_size // STRIDES[s]
            self.grid_sizes.append((side, side))
            num_pos = side * side + (1 if s == 3 else 0)
            setattr(self, f"patch_embed{s + 1}", PatchEmbed(patch, in_chans, c.embed_dims[s], norm=True))
            setattr(self, f"pos_embed{s + 1}", nn.Parameter(torch.zeros(1, num_pos, c.embed_dims[s])))
            setattr(self, f"pos_drop{s + 1}", nn.Dropout(c.drop_rate))
            setattr(self, f"block{s + 1}", blocks)
        self.norm = nn.LayerNorm(c.embed_dims[3], eps=1e-6)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dims[3]))
        _init_weights(self)
        for s in range(4):
            nn.init.trunc_normal_(getattr(self, f"pos_embed{s + 1}"), std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def no_weight_decay(self) -> set[str]:
        return {f"pos_embed{s + 1}" for s in range(4)} | {"cls_token"}

    def _stage(self, s: int, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Stage s (0-based): (B, C_in, H, W) -> tokens (B, [1 +] H'*W', C_s) and H', W'."""
        x, (h, w) = getattr(self, f"patch_embed{s + 1}")(x)  # (B, N, C_s)
        has_cls = s == 3
        pos = resample_abs_pos_embed(getattr(self, f"pos_embed{s + 1}"), (h, w), self.grid_sizes[s],
                                     num_prefix_tokens=int(has_cls), mode="bilinear", antialias=False)
        if has_cls:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, C_4)
        x = getattr(self, f"pos_drop{s + 1}")(x + pos)
        for blk in getattr(self, f"block{s + 1}"):
            x = blk(x, h, w)
        return x, h, w

    def _run_stages(self, x: torch.Tensor, last: int = 3) -> list[torch.Tensor]:
        maps = []
        for s in range(last + 1):
            tokens, h, w = self._stage(s, x)
            if s == 3:
                tokens = self.norm(tokens)[:, 1:]  # drop the class token: (B, N, C_4)
            x = tokens_to_grid(tokens, h, w)  # (B, C_s, h, w), channels-last view for the next stage
            maps.append(x.contiguous())  # the pyramid maps stay plain contiguous NCHW
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> normalised last-stage tokens with the class token first (B, 1 + N, C_4)."""
        for s in range(3):
            tokens, h, w = self._stage(s, x)
            x = tokens_to_grid(tokens, h, w)  # (B, C_s, h, w), channels-last view: no copy
        return self.norm(self._stage(3, x)[0])

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + N, C_4) -> logits (B, num_classes) from the class token."""
        return self.head(x[:, 0])


# Variant tables: the official depths / widths (SYSTEMS.md sections 3-4).
_PVT_V1_DEPTHS = {"tiny": [2, 2, 2, 2], "small": [3, 4, 6, 3], "medium": [3, 4, 18, 3], "large": [3, 8, 27, 3]}
_PVT_V2 = {
    "b0": dict(embed_dims=[32, 64, 160, 256], depths=[2, 2, 2, 2]),
    "b1": dict(embed_dims=[64, 128, 320, 512], depths=[2, 2, 2, 2]),
    "b2": dict(embed_dims=[64, 128, 320, 512], depths=[3, 4, 6, 3]),
    "b2_li": dict(embed_dims=[64, 128, 320, 512], depths=[3, 4, 6, 3], linear=True),
    "b3": dict(embed_dims=[64, 128, 320, 512], depths=[3, 4, 18, 3]),
    "b4": dict(embed_dims=[64, 128, 320, 512], depths=[3, 8, 27, 3]),
    "b5": dict(embed_dims=[64, 128, 320, 512], depths=[3, 6, 40, 3], mlp_ratios=[4, 4, 4, 4]),
}


def _pvt_v1(size: str, **overrides) -> PyramidVisionTransformer:
    return PyramidVisionTransformer(PVTConfig(depths=_PVT_V1_DEPTHS[size], **overrides))


def _pvt_v2(variant: str, **overrides) -> PyramidVisionTransformerV2:
    return PyramidVisionTransformerV2(PVTConfig(**{**_PVT_V2[variant], **overrides}))


@register_model
def pvt_tiny(**kw) -> PyramidVisionTransformer:
    return _pvt_v1("tiny", **kw)


@register_model
def pvt_small(**kw) -> PyramidVisionTransformer:
    return _pvt_v1("small", **kw)


@register_model
def pvt_medium(**kw) -> PyramidVisionTransformer:
    return _pvt_v1("medium", **kw)


@register_model
def pvt_large(**kw) -> PyramidVisionTransformer:
    return _pvt_v1("large", **kw)


@register_model
def pvt_v2_b0(**kw) -> PyramidVisionTransformerV2:
    return _pvt_v2("b0", **kw)


@register_model
def pvt_v2_b1(**kw) -> PyramidVisionTransformerV2:
    return _pvt_v2("b1", **kw)


@register_model
def pvt_v2_b2(**kw) -> PyramidVisionTransformerV2:
    return _pvt_v2("b2", **kw)


@register_model
def pvt_v2_b2_li(**kw) -> PyramidVisionTransformerV2:
    return _pvt_v2("b2_li", **kw)


@register_model
def pvt_v2_b3(**kw) -> PyramidVisionTransformerV2:
    return _pvt_v2("b3", **kw)


@register_model
def pvt_v2_b4(**kw) -> PyramidVisionTransformerV2:
    return _pvt_v2("b4", **kw)


@register_model
def pvt_v2_b5(**kw) -> PyramidVisionTransformerV2:
    return _pvt_v2("b5", **kw)
