"""Vision Transformer (Dosovitskiy et al., 2020), with timm's module names so timm weights load as they are."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vistra.layers import Attention, DropPath, Mlp, PatchEmbed, drop_path_rates, resample_abs_pos_embed
from vistra.registry import register_model


@dataclass
class ViTConfig:
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0


class Block(nn.Module):
    """Pre-norm transformer block: x += MSA(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, drop: float, attn_drop: float,
                 drop_path: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, weights = self.attn(self.norm1(x), need_weights)
        x = x + self.drop_path(y)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, weights

    def forward_class_token(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + N, D) -> the class token's output (B, 1, D), as forward gives it: keys and values from
        every token, the query and the MLP for the class token alone."""
        cls = x[:, :1] + self.drop_path(self.attn.forward_leading(self.norm1(x), 1))  # (B, 1, D)
        return cls + self.drop_path(self.mlp(self.norm2(cls)))


class VisionTransformer(nn.Module):
    """ViT classifier; also a backbone (forward_pyramid gives the patch-token maps of chosen blocks).

    Any input size divisible by the patch size works: the position embedding is resized bicubically.
    """

    arch = "vit"

    def __init__(self, config: ViTConfig):
        super().__init__()
        c = self.config = config
        self.num_classes = c.num_classes
        self.embed_dim = c.embed_dim
        self.patch_size = c.patch_size
        self.grid_size = (c.img_size // c.patch_size, c.img_size // c.patch_size)
        self.patch_embed = PatchEmbed(c.patch_size, c.in_chans, c.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1] + 1, c.embed_dim))
        self.pos_drop = nn.Dropout(c.drop_rate)
        rates = drop_path_rates(c.drop_path_rate, c.depth)
        self.blocks = nn.ModuleList(
            Block(c.embed_dim, c.num_heads, c.mlp_ratio, c.qkv_bias, c.drop_rate, c.attn_drop_rate, rates[i])
            for i in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.embed_dim, eps=1e-6)
        self.head = nn.Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.feature_info = [
            {"num_chs": c.embed_dim, "reduction": c.patch_size, "module": f"blocks.{i}"} for i in range(c.depth)
        ]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, 3, H, W) -> tokens with class token and position (B, 1 + H/p*W/p, D), grid (H/p, W/p)."""
        x, hw = self.patch_embed(x)  # (B, N, D)
        pos = resample_abs_pos_embed(self.pos_embed, hw, self.grid_size, num_prefix_tokens=1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, D)
        return self.pos_drop(x + pos), hw

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> normalised tokens (B, 1 + N, D)."""
        x, _ = self._embed(x)
        for blk in self.blocks:
            x, _ = blk(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + N, D) -> logits (B, num_classes) from the class token."""
        return self.head(x[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes), equal to forward_head(forward_features(x)).

        Only the class token reaches the logits, so the last block runs for it alone (its patch tokens give only
        keys and values): about 7% less work for a 12-block ViT, the same logits up to float rounding.
        """
        x, _ = self._embed(x)
        for blk in self.blocks[:-1]:
            x, _ = blk(x)
        cls = self.blocks[-1].forward_class_token(x)  # (B, 1, D)
        return self.forward_head(self.norm(cls))

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, 3, H, W) -> logits and each block's attention weights (B, heads, 1 + N, 1 + N)."""
        x, _ = self._embed(x)
        maps = []
        for blk in self.blocks:
            x, weights = blk(x, need_weights=True)
            maps.append(weights)
        return self.forward_head(self.norm(x)), maps

    def forward_pyramid(self, x: torch.Tensor, out_indices: Sequence[int]) -> list[torch.Tensor]:
        """(B, 3, H, W) -> normalised patch-token maps (B, D, H/p, W/p) of the blocks in out_indices."""
        x, (h, w) = self._embed(x)
        wanted, outs = set(out_indices), {}
        for i, blk in enumerate(self.blocks[: max(out_indices) + 1]):
            x, _ = blk(x)
            if i in wanted:
                tokens = self.norm(x[:, 1:])  # (B, N, D)
                outs[i] = tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # (B, D, H/p, W/p)
        return [outs[i] for i in out_indices]


def _vit(img_size: int, patch_size: int, embed_dim: int, depth: int, num_heads: int, **overrides) -> VisionTransformer:
    return VisionTransformer(
        ViTConfig(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                  **overrides)
    )


@register_model
def vit_tiny_patch16_224(**kw) -> VisionTransformer:
    """ViT-Ti/16: D 192, 12 layers, 3 heads."""
    return _vit(kw.pop("img_size", 224), 16, 192, 12, 3, **kw)


@register_model
def vit_tiny_patch16_384(**kw) -> VisionTransformer:
    return _vit(kw.pop("img_size", 384), 16, 192, 12, 3, **kw)


@register_model
def vit_small_patch16_224(**kw) -> VisionTransformer:
    """ViT-S/16: D 384, 12 layers, 6 heads."""
    return _vit(kw.pop("img_size", 224), 16, 384, 12, 6, **kw)


@register_model
def vit_small_patch16_384(**kw) -> VisionTransformer:
    return _vit(kw.pop("img_size", 384), 16, 384, 12, 6, **kw)


@register_model
def vit_base_patch16_224(**kw) -> VisionTransformer:
    """ViT-B/16: D 768, 12 layers, 12 heads (86M parameters)."""
    return _vit(kw.pop("img_size", 224), 16, 768, 12, 12, **kw)


@register_model
def vit_base_patch16_384(**kw) -> VisionTransformer:
    return _vit(kw.pop("img_size", 384), 16, 768, 12, 12, **kw)


@register_model
def vit_base_patch32_224(**kw) -> VisionTransformer:
    """ViT-B/32."""
    return _vit(kw.pop("img_size", 224), 32, 768, 12, 12, **kw)


@register_model
def vit_large_patch16_224(**kw) -> VisionTransformer:
    """ViT-L/16: D 1024, 24 layers, 16 heads (307M parameters)."""
    return _vit(kw.pop("img_size", 224), 16, 1024, 24, 16, **kw)


@register_model
def vit_large_patch16_384(**kw) -> VisionTransformer:
    return _vit(kw.pop("img_size", 384), 16, 1024, 24, 16, **kw)


@register_model
def vit_huge_patch14_224(**kw) -> VisionTransformer:
    """ViT-H/14: D 1280, 32 layers, 16 heads (632M parameters)."""
    return _vit(kw.pop("img_size", 224), 14, 1280, 32, 16, **kw)
