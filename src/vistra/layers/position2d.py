"""Mask-aware 2-D position encodings for detection (DETR, Deformable DETR): sine and learned.

Both take the padding mask of a feature map (True = padding) and return a (B, D, H, W) encoding. Module and
parameter names follow facebookresearch/detr (row_embed, col_embed), so official checkpoints map directly.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def sine_position_2d(
    mask: torch.Tensor,
    num_pos_feats: int = 128,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    offset: float = 0.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Sine / cosine encoding of the (y, x) position of every unpadded pixel.

    mask (B, H, W) bool, True = padding -> (B, 2 * num_pos_feats, H, W) float32: the first num_pos_feats channels
    encode y, the rest x; channel pairs (2i, 2i+1) are sin / cos of pos / temperature^(2i / num_pos_feats).

    Positions are counted over unpadded pixels only (cumulative sums of ~mask from 1). With normalize they are
    divided by the count of unpadded rows / columns, so each image spans [0, scale] whatever its padding:
    DETR: (cumsum + offset) / (last + eps) * scale with offset 0; Deformable DETR uses offset -0.5.
    """
    not_mask = ~mask
    y_embed = not_mask.cumsum(1, dtype=torch.float32)  # (B, H, W): 1..h down each column
    x_embed = not_mask.cumsum(2, dtype=torch.float32)  # (B, H, W): 1..w along each row
    if normalize:
        y_embed = (y_embed + offset) / (y_embed[:, -1:, :] + eps) * scale
        x_embed = (x_embed + offset) / (x_embed[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)  # (F,)
    pos_x = x_embed[..., None] / dim_t  # (B, H, W, F)
    pos_y = y_embed[..., None] / dim_t  # (B, H, W, F)
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)  # (B, H, W, F)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)  # (B, H, W, F)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)  # (B, 2F, H, W)


class PositionEmbeddingSine2d(nn.Module):
    """DETR's sine encoding (normalize=True, scale 2*pi, temperature 10000, offset 0); no parameters.

    forward(mask (B, H, W) bool, True = padding) -> (B, 2 * num_pos_feats, H, W) float32.
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
        offset: float = 0.0,
    ):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.offset = offset

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        return sine_position_2d(mask, self.num_pos_feats, self.temperature, self.normalize, self.scale, self.offset)

    def extra_repr(self) -> str:
        return (f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, normalize={self.normalize}, "
                f"offset={self.offset}")


class PositionEmbeddingLearned2d(nn.Module):
    """DETR's learned encoding: a row and a column embedding table (official names row_embed, col_embed).

    forward(mask (B, H, W)) -> (B, 2 * num_pos_feats, H, W); the first half is the column (x) embedding, the second
    the row (y) embedding, as the official code. The mask only gives the shape: padding does not shift positions.
    Maps larger than max_size (50) in either side are refused.
    """

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50):
        super().__init__()
        self.max_size = max_size
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        B, H, W = mask.shape
        if H > self.max_size or W > self.max_size:
            raise ValueError(
                f"learned position embedding covers at most {self.max_size}x{self.max_size} positions, the feature "
                f"map is {H}x{W}; use smaller images or position_embedding='sine'"
            )
        x_emb = self.col_embed.weight[:W]  # (W, F)
        y_emb = self.row_embed.weight[:H]  # (H, F)
        pos = torch.cat([x_emb[None].expand(H, W, -1), y_emb[:, None].expand(H, W, -1)], dim=-1)  # (H, W, 2F)
        return pos.permute(2, 0, 1)[None].expand(B, -1, -1, -1)  # (B, 2F, H, W)


def build_position_encoding(kind: str, hidden_dim: int, offset: float = 0.0) -> nn.Module:
    """The official `position_embedding` option: "sine" (alias "v2") or "learned" (alias "v3"); D = hidden_dim."""
    if hidden_dim % 2:
        raise ValueError(f"hidden_dim must be even for a 2-D position encoding, got {hidden_dim}")
    if kind in ("sine", "v2"):
        return PositionEmbeddingSine2d(hidden_dim // 2, normalize=True, offset=offset)
    if kind in ("learned", "v3"):
        return PositionEmbeddingLearned2d(hidden_dim // 2)
    raise ValueError(f"position_embedding must be 'sine' or 'learned', got {kind!r}")
