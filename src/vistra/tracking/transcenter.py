"""TransCenter-style tracker (Xu et al., TransCenter V2): PVTv2 image encoder shared by frames t and t-1, a
deformable-attention decoder fed with dense pixel-level queries, and center heads at stride 4.

    frame t   --PVTv2--> 4 maps --1x1 conv + GN--> memory_t (multi-scale, level embedding, sine positions)
    frame t-1 --PVTv2--> 4 maps --1x1 conv + GN--> memory_{t-1}
    detection queries = memory_t pixels of the levels in `query_levels`, decoded against memory_t
    tracking queries  = memory_{t-1} pixels of those levels, decoded against memory_t (where did each go?)
    decoded tokens -> their grids, upsampled and summed with the stride-4 map -> det / track features (stride 4)
    heads: hm (per class, focal loss), wh, reg (sub-pixel offset) from det; tracking (t -> t-1 displacement)
           from [det, track].

`encode(images, mask)` runs the backbone and projections once per frame, so a tracker reuses frame t's
encoding as the next step's frame t-1. Outputs are in output-map pixels (see vistra.tracking.centernet).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vistra.detection.deformable_transformer import encoder_reference_points, ffn_residual, valid_ratio
from vistra.layers.deform_attn import MSDeformAttn
from vistra.layers.position2d import sine_position_2d
from vistra.registry import get_builder, register_model


@dataclass
class TransCenterConfig:
    backbone: str = "pvt_v2_b2"
    num_classes: int = 1  # heatmap channels (1: pedestrians in MOT17; one per class for traffic data)
    d_model: int = 256
    n_heads: int = 8
    n_points: int = 4
    dec_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.0
    query_levels: tuple[int, ...] = (1, 2, 3)  # levels (strides 8, 16, 32) whose pixels are the dense queries
    head_channels: int = 256
    stride: int = 4  # output stride of the heads (the first PVTv2 level)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_backbone: str | None = None  # ImageNet backbone weights (any format vistra reads), head ignored
    impl: str = "auto"  # deformable attention implementation


@dataclass
class Encoded:
    """One frame, encoded: flattened multi-scale memory (B, S, d), positions (B, S, d), padding (B, S),
    level shapes, valid ratios (B, L, 2) and the stride-4 projected map (B, d, H0, W0)."""

    memory: torch.Tensor
    pos: torch.Tensor
    padding: torch.Tensor
    shapes: list[tuple[int, int]]
    valid_ratios: torch.Tensor
    fine: torch.Tensor


class DenseQueryDecoderLayer(nn.Module):
    """Dense queries cross-attend to a frame's multi-scale memory (deformable), then FFN; post-norm.

    Dense pixel queries have no full self-attention (it would be quadratic in pixels); each query's own
    context comes from the deformable samples around it."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int,
                 impl: str):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, reference_points: torch.Tensor,
                memory: torch.Tensor, shapes, padding: torch.Tensor) -> torch.Tensor:
        """tgt, query_pos (B, Q, d), reference_points (B, Q, L, 2), memory (B, S, d) -> (B, Q, d)."""
        cross = self.cross_attn(tgt + query_pos, reference_points, memory, shapes, padding)
        tgt = self.norm1(tgt + self.dropout1(cross))
        return self.norm2(ffn_residual(self, tgt, self.dropout2, self.dropout3))


def _head(in_ch: int, mid: int, out_ch: int, bias: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(in_ch, mid, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(mid, out_ch, 1))
    nn.init.constant_(head[-1].bias, bias)
    return head


class TransCenter(nn.Module):
    """forward(images, prev_images, mask=None, prev_mask=None) -> {"hm" (B, C, H/4, W/4) logits, "wh", "reg",
    "tracking" (B, 2, H/4, W/4)}. Images (B, 3, H, W) of any size; masks (B, H, W) True = padding."""

    arch = "transcenter"

    def __init__(self, config: TransCenterConfig):
        super().__init__()
        from vistra.registry import create_model

        c = self.config = config
        self.backbone = create_model(c.backbone, features_only=True, pretrained=c.pretrained_backbone,
                                     **c.backbone_kwargs)
        strides = self.backbone.strides
        if strides[0] != c.stride:
            raise ValueError(f"TransCenter needs a backbone whose first map has stride {c.stride}, "
                             f"{c.backbone} gives {strides}")
        levels = len(strides)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, c.d_model, 1), nn.GroupNorm(32, c.d_model)) for ch in self.backbone.channels)
        self.level_embed = nn.Parameter(torch.empty(levels, c.d_model))
        self.det_decoder = nn.ModuleList(
            DenseQueryDecoderLayer(c.d_model, c.dim_feedforward, c.dropout, levels, c.n_heads, c.n_points, c.impl)
            for _ in range(c.dec_layers))
        self.track_decoder = nn.ModuleList(
            DenseQueryDecoderLayer(c.d_model, c.dim_feedforward, c.dropout, levels, c.n_heads, c.n_points, c.impl)
            for _ in range(c.dec_layers))
        self.det_fuse = nn.Sequential(nn.Conv2d(c.d_model, c.d_model, 3, padding=1), nn.GroupNorm(32, c.d_model),
                                      nn.ReLU(inplace=True))
        self.track_fuse = nn.Sequential(nn.Conv2d(c.d_model, c.d_model, 3, padding=1),
                                        nn.GroupNorm(32, c.d_model), nn.ReLU(inplace=True))
        prior = -math.log((1 - 0.1) / 0.1)  # heatmap starts at p = 0.1 (CenterNet's -2.19)
        self.hm = _head(c.d_model, c.head_channels, c.num_classes, bias=prior)
        self.wh = _head(c.d_model, c.head_channels, 2)
        self.reg = _head(c.d_model, c.head_channels, 2)
        self.tracking = _head(2 * c.d_model, c.head_channels, 2)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.normal_(self.level_embed)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

    # -------------------------------------------------------------------------------------- encoding
    def encode(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> Encoded:
        """(B, 3, H, W) frame -> its multi-scale memory (see Encoded)."""
        B, _, H, W = images.shape
        if mask is None:
            mask = torch.zeros(B, H, W, dtype=torch.bool, device=images.device)
        maps = self.backbone(images)
        srcs, poss, pads, shapes = [], [], [], []
        for lvl, (feat, proj) in enumerate(zip(maps, self.input_proj)):
            src = proj(feat)  # (B, d, h, w)
            pad = F.interpolate(mask[None].float(), size=src.shape[-2:])[0].bool()  # (B, h, w)
            pos = sine_position_2d(pad, self.config.d_model // 2, offset=-0.5).to(src.dtype)  # (B, d, h, w)
            shapes.append((src.shape[-2], src.shape[-1]))
            srcs.append(src)
            poss.append(pos.flatten(2).transpose(1, 2) + self.level_embed[lvl])  # (B, h*w, d)
            pads.append(pad)
        memory = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # (B, S, d)
        padding = torch.cat([p.flatten(1) for p in pads], 1)  # (B, S)
        ratios = torch.stack([valid_ratio(p) for p in pads], 1)  # (B, L, 2)
        return Encoded(memory, torch.cat(poss, 1), padding, shapes, ratios, srcs[0])

    # -------------------------------------------------------------------------------------- decoding
    def _queries(self, enc: Encoded) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """The dense queries of `enc`: tokens and positions of the query levels, (B, Q, d) each."""
        starts = [0]
        for h, w in enc.shapes:
            starts.append(starts[-1] + h * w)
        pick = [torch.arange(starts[lvl], starts[lvl + 1], device=enc.memory.device) for lvl in
                self.config.query_levels]
        idx = torch.cat(pick)
        return enc.memory[:, idx], enc.pos[:, idx], [enc.shapes[lvl] for lvl in self.config.query_levels]

    def _query_refs(self, enc: Encoded) -> torch.Tensor:
        """Reference points of the dense queries (their pixel centres), seen from every level: (B, Q, L, 2)."""
        refs = encoder_reference_points(enc.shapes, enc.valid_ratios)  # (B, S, L, 2)
        starts = [0]
        for h, w in enc.shapes:
            starts.append(starts[-1] + h * w)
        return torch.cat([refs[:, starts[lvl]:starts[lvl + 1]] for lvl in self.config.query_levels], 1)

    def _decode(self, layers: nn.ModuleList, queries: torch.Tensor, query_pos: torch.Tensor, refs: torch.Tensor,
                memory: Encoded) -> torch.Tensor:
        x = queries
        for layer in layers:
            x = layer(x, query_pos, refs, memory.memory, memory.shapes, memory.padding)
        return x

    def _to_fine(self, tokens: torch.Tensor, shapes: list[tuple[int, int]], fine: torch.Tensor,
                 fuse: nn.Module) -> torch.Tensor:
        """Decoded tokens (B, Q, d) of the query levels -> their grids, upsampled to the stride-4 map and summed
        with it -> (B, d, H0, W0)."""
        out = fine
        start = 0
        for h, w in shapes:
            grid = tokens[:, start:start + h * w].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)  # (B, d, h, w)
            out = out + F.interpolate(grid, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            start += h * w
        return fuse(out)

    def decode(self, current: Encoded, previous: Encoded) -> dict[str, torch.Tensor]:
        """Encoded frames t and t-1 -> the output maps at stride 4."""
        q, qpos, qshapes = self._queries(current)
        det = self._decode(self.det_decoder, q, qpos, self._query_refs(current), current)  # (B, Q, d)
        pq, ppos, pshapes = self._queries(previous)
        track = self._decode(self.track_decoder, pq, ppos, self._query_refs(previous), current)  # (B, Q', d)
        det_map = self._to_fine(det, qshapes, current.fine, self.det_fuse)  # (B, d, H0, W0)
        track_map = self._to_fine(track, pshapes, previous.fine, self.track_fuse)  # (B, d, H0', W0')
        if track_map.shape[-2:] != det_map.shape[-2:]:  # frames of different size: align t-1 to t
            track_map = F.interpolate(track_map, size=det_map.shape[-2:], mode="bilinear", align_corners=False)
        return {
            "hm": self.hm(det_map),
            "wh": self.wh(det_map),
            "reg": self.reg(det_map),
            "tracking": self.tracking(torch.cat([det_map, track_map], 1)),
        }

    def forward(self, images: torch.Tensor, prev_images: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, prev_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Frames t and t-1 (t-1 defaults to t, as for the first frame of a sequence) -> output maps."""
        current = self.encode(images, mask)
        previous = current if prev_images is None else self.encode(prev_images, prev_mask)
        return self.decode(current, previous)


# ----------------------------------------------------------------------------------------------- presets
@register_model
def transcenter(**kwargs: Any) -> TransCenter:
    """Generic builder: create_model("transcenter", backbone="pvt_v2_b0", d_model=..., dec_layers=..., ...)."""
    if "query_levels" in kwargs:
        kwargs["query_levels"] = tuple(kwargs["query_levels"])
    return TransCenter(TransCenterConfig(**kwargs))


@register_model
def transcenter_pvt_v2_b0(**kwargs: Any) -> TransCenter:
    """TransCenter on PVTv2-b0 (the light model)."""
    return get_builder("transcenter")(**{"backbone": "pvt_v2_b0", **kwargs})


@register_model
def transcenter_pvt_v2_b2(**kwargs: Any) -> TransCenter:
    """TransCenter V2 on PVTv2-b2."""
    return get_builder("transcenter")(**{"backbone": "pvt_v2_b2", **kwargs})


# Sizes of the released TransCenter V2 / TransCenter-Lite models (official args: dec_n_points 9, 6 / 4 decoder
# layers, decoder FFN 1024 / 512): the models their checkpoints convert into, in part (checkpoints/
# convert_transcenter.py; README, Tracking).
@register_model
def transcenter_v2_pvt_v2_b2(**kwargs: Any) -> TransCenter:
    """TransCenter on PVTv2-b2 with the released TransCenter V2 decoder sizes (9 sampling points)."""
    return get_builder("transcenter")(**{"backbone": "pvt_v2_b2", "n_points": 9, **kwargs})


@register_model
def transcenter_lite_pvt_v2_b0(**kwargs: Any) -> TransCenter:
    """TransCenter on PVTv2-b0 with the released TransCenter-Lite decoder sizes (4 layers, FFN 512, 9 points)."""
    return get_builder("transcenter")(**{"backbone": "pvt_v2_b0", "n_points": 9, "dec_layers": 4,
                                         "dim_feedforward": 512, **kwargs})
