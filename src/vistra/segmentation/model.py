"""Segmenter: a feature-extractor backbone plus a segmentation head; the registered segmentation presets."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vistra.backbones.features import FeatureExtractor
from vistra.registry import create_model, register_model
from vistra.segmentation.heads import HEADS


@dataclass
class SegmenterConfig:
    """What `build_segmenter` was called with (the backbone weights path is a load option, not kept)."""

    backbone: str
    head: str
    num_classes: int = 150
    img_size: int = 512
    out_indices: tuple[int, ...] | None = None
    drop_path_rate: float = 0.0
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    head_kwargs: dict[str, Any] = field(default_factory=dict)


class Segmenter(nn.Module):
    """Semantic segmentation model: images (B, 3, H, W) -> per-pixel class logits (B, num_classes, H, W).

    `backbone` gives a list of maps (B, C_i, H/s_i, W/s_i); `head` turns them into logits at its output stride,
    which are resized bilinearly to the input size. Any input size works: images are zero-padded at the bottom
    and right to a multiple of `size_divisor` (the backbone's coarsest stride, which patch embeddings without
    overlap need) and the padding is cropped off the logits.
    """

    arch = "segmenter"

    def __init__(self, backbone: FeatureExtractor, head: nn.Module, config: SegmenterConfig | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.config = config
        self.num_classes = head.classifier.out_channels
        self.size_divisor = max(backbone.strides)

    def no_weight_decay(self) -> set[str]:
        """Backbone parameters without weight decay (position embeddings, class tokens), as full names."""
        inner = self.backbone.model
        names = inner.no_weight_decay() if hasattr(inner, "no_weight_decay") else set()
        return {f"backbone.model.{n}" for n in names}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> logits (B, num_classes, H, W)."""
        height, width = images.shape[-2:]
        pad_h, pad_w = -height % self.size_divisor, -width % self.size_divisor
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))  # (B, 3, H', W'), multiples of size_divisor
        logits = self.head(self.backbone(images))  # (B, K, H' / s_out, W' / s_out)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :height, :width]  # (B, K, H, W)


def build_segmenter(backbone: str, head: str, num_classes: int = 150, img_size: int = 512,
                    out_indices: tuple[int, ...] | None = None, backbone_weights: str | Path | None = None,
                    drop_path_rate: float = 0.0, backbone_kwargs: dict[str, Any] | None = None,
                    **head_kwargs) -> Segmenter:
    """A Segmenter over the registered backbone `backbone` with the head `head` ("linear", "pup" or "fpn").

    `backbone_weights`: a checkpoint in any supported format (ImageNet classifier, detector, ...) loaded into
    the backbone only; its classifier head is skipped and the segmentation head starts fresh.
    `out_indices` picks the backbone maps (default: all levels; ViT: the last block). `backbone_kwargs` go to
    the backbone's builder (e.g. `depths`, `embed_dims`), `head_kwargs` to the head's constructor (e.g.
    `channels`, `fpn_channels`, `norm`, `dropout`).
    """
    if head not in HEADS:
        raise ValueError(f"unknown segmentation head {head!r}; choose one of {sorted(HEADS)}")
    features = create_model(backbone, pretrained=backbone_weights, features_only=True, out_indices=out_indices,
                            img_size=img_size, drop_path_rate=drop_path_rate, **(backbone_kwargs or {}))
    try:
        decoder = HEADS[head](features.channels, features.strides, num_classes, **head_kwargs)
    except TypeError as err:
        raise TypeError(f"bad option for the {head!r} head of {backbone}: {err}") from err
    config = SegmenterConfig(backbone, head, num_classes, img_size, tuple(features.out_indices), drop_path_rate,
                             dict(backbone_kwargs or {}), dict(head_kwargs))
    return Segmenter(features, decoder, config)


LAST_BLOCK = (-1,)


@register_model
def seg_vit_tiny_patch16_linear(num_classes: int = 150, img_size: int = 512, backbone_weights=None, **kw) -> Segmenter:
    """ViT-Ti/16 patch-token map (last block) -> linear (1x1 conv) decoder, Segmenter-style."""
    return build_segmenter("vit_tiny_patch16_224", "linear", num_classes, img_size, LAST_BLOCK,
                           backbone_weights, **kw)


@register_model
def seg_vit_small_patch16_linear(num_classes: int = 150, img_size: int = 512, backbone_weights=None,
                                 **kw) -> Segmenter:
    """ViT-S/16 patch-token map (last block) -> linear (1x1 conv) decoder, Segmenter-style."""
    return build_segmenter("vit_small_patch16_224", "linear", num_classes, img_size, LAST_BLOCK,
                           backbone_weights, **kw)


@register_model
def seg_vit_small_patch16_pup(num_classes: int = 150, img_size: int = 512, backbone_weights=None, **kw) -> Segmenter:
    """ViT-S/16 patch-token map (last block) -> SETR progressive upsampling decoder (4 x conv + 2x up)."""
    return build_segmenter("vit_small_patch16_224", "pup", num_classes, img_size, LAST_BLOCK,
                           backbone_weights, **kw)


@register_model
def semfpn_pvt_tiny(num_classes: int = 150, img_size: int = 512, backbone_weights=None, **kw) -> Segmenter:
    """PVT-Tiny (v1) 4-level pyramid -> Semantic FPN, as in the PVT paper's ADE20K experiments."""
    return build_segmenter("pvt_tiny", "fpn", num_classes, img_size, None, backbone_weights, **kw)


@register_model
def semfpn_pvt_v2_b0(num_classes: int = 150, img_size: int = 512, backbone_weights=None, **kw) -> Segmenter:
    """PVTv2-B0 4-level pyramid -> Semantic FPN."""
    return build_segmenter("pvt_v2_b0", "fpn", num_classes, img_size, None, backbone_weights, **kw)


@register_model
def semfpn_pvt_v2_b2(num_classes: int = 150, img_size: int = 512, backbone_weights=None, **kw) -> Segmenter:
    """PVTv2-B2 4-level pyramid -> Semantic FPN."""
    return build_segmenter("pvt_v2_b2", "fpn", num_classes, img_size, None, backbone_weights, **kw)


# A small PVTv2 for the built-in digits-seg data (`vistra demo`): trains on a CPU in a minute or two. Its images
# are tiny (32-64 px), so attention runs without spatial reduction (sr 1) at every stage.
DIGITS_BACKBONE = {"embed_dims": [32, 64, 128, 160], "depths": [1, 1, 2, 1], "num_heads": [1, 2, 4, 5],
                   "mlp_ratios": [4, 4, 4, 4], "sr_ratios": [1, 1, 1, 1]}


@register_model
def semfpn_pvt_v2_digits(num_classes: int = 11, img_size: int = 64, backbone_weights=None, **kw) -> Segmenter:
    """A small PVTv2 (dims 32-160, depths 1-1-2-1, no spatial reduction) -> Semantic FPN with 32 channels, for
    the digits-seg data (1.2M parameters)."""
    kw.setdefault("fpn_channels", 32)
    kw.setdefault("channels", 32)
    backbone_kwargs = {**DIGITS_BACKBONE, **kw.pop("backbone_kwargs", {})}
    return build_segmenter("pvt_v2_b0", "fpn", num_classes, img_size, None, backbone_weights,
                           backbone_kwargs=backbone_kwargs, **kw)
