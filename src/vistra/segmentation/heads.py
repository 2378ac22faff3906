"""Segmentation heads: feature maps from a backbone -> class logits at the head's output stride.

Every head takes the same constructor arguments first, ``(in_channels, strides, num_classes)``: the channels
and strides of the backbone maps it receives (``FeatureExtractor.channels`` / ``.strides``), so any head fits
any backbone. ``forward(features)`` takes the list of maps, finest first, and returns logits
(B, num_classes, H / s_out, W / s_out); the ``Segmenter`` resizes them to the image size. The last layer of
every head is its 1x1 conv ``classifier``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    """"bn" -> BatchNorm2d, "gn" -> GroupNorm with up to 32 groups of at least 4 channels (32 groups for mmseg's
    128 or 256 channels). Groups of fewer channels would normalise the small, coarse maps of small images away."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(32, max(1, channels // 4)), channels)
    raise ValueError(f"unknown norm {kind!r}; use 'bn' or 'gn'")


def conv_norm_relu(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    """3x3 conv (no bias, padding 1) -> norm -> ReLU; keeps the spatial size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        norm_layer(norm, out_channels),
        nn.ReLU(inplace=True),
    )


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, 2H, 2W), bilinear."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


def _num_doublings(stride: int, finer: int, what: str) -> int:
    """n such that stride == finer * 2^n; ValueError naming `what` when there is none."""
    ratio, rest = divmod(stride, finer)
    if rest or ratio < 1 or ratio & (ratio - 1):
        raise ValueError(f"{what}: stride {stride} is not a power-of-two multiple of {finer}")
    return ratio.bit_length() - 1


class LinearHead(nn.Module):
    """Linear decoding of a token map (Segmenter / SETR "naive" baseline): dropout -> 1x1 conv to classes.

    Uses the last (coarsest) map only: (B, C, H/s, W/s) -> logits (B, num_classes, H/s, W/s). The bilinear
    upsampling to the image size is done by the Segmenter.
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(in_channels[-1], num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """features: list of (B, C_i, H_i, W_i), last one used -> (B, num_classes, H_last, W_last)."""
        return self.classifier(self.dropout(features[-1]))


class ProgressiveUpsamplingHead(nn.Module):
    """SETR-PUP: `num_upsample` x (conv3x3-norm-ReLU + 2x bilinear upsampling), then a 1x1 classifier.

    On the last map (B, C, H/s, W/s); num_upsample defaults to log2(s) (4 for patch 16), so the logits come out
    at full resolution: (B, num_classes, H/s * 2^n, W/s * 2^n).
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], num_classes: int, channels: int = 256,
                 num_upsample: int | None = None, norm: str = "bn", dropout: float = 0.1):
        super().__init__()
        if num_upsample is None:
            num_upsample = _num_doublings(strides[-1], 1, "ProgressiveUpsamplingHead")
        self.stages = nn.ModuleList(
            conv_norm_relu(in_channels[-1] if i == 0 else channels, channels, norm) for i in range(num_upsample)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels if num_upsample else in_channels[-1], num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """features: list of maps, last one used (B, C, h, w) -> (B, num_classes, h * 2^n, w * 2^n)."""
        x = features[-1]
        for stage in self.stages:
            x = upsample2x(stage(x))  # (B, channels, 2h, 2w)
        return self.classifier(self.dropout(x))


class SemanticFPNHead(nn.Module):
    """Semantic FPN (Kirillov et al., Panoptic FPN): an FPN over the pyramid, then its semantic branch.

    FPN: lateral 1x1 convs to `fpn_channels`, top-down pathway (nearest 2x upsampling + add), 3x3 output convs.
    Semantic branch: each level at stride s gets max(1, log2(s / s_0)) x (conv3x3-norm-ReLU [+ 2x bilinear
    upsampling when s > s_0]) with `channels` channels, which brings it to the finest stride s_0; the levels
    are summed and a 1x1 conv classifies. Maps (B, C_i, H/s_i, W/s_i) -> logits (B, num_classes, H/s_0, W/s_0).
    """

    def __init__(self, in_channels: Sequence[int], strides: Sequence[int], num_classes: int,
                 fpn_channels: int = 256, channels: int = 128, norm: str = "gn", dropout: float = 0.1):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, 1) for c in in_channels)
        self.fpn_out = nn.ModuleList(nn.Conv2d(fpn_channels, fpn_channels, 3, padding=1) for _ in in_channels)
        self.scale_heads = nn.ModuleList()
        for s in strides:
            n = max(1, _num_doublings(s, strides[0], "SemanticFPNHead"))
            self.scale_heads.append(nn.ModuleList(
                conv_norm_relu(fpn_channels if i == 0 else channels, channels, norm) for i in range(n)
            ))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def _pyramid(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Backbone maps -> FPN maps (B, fpn_channels, H_i, W_i), same sizes."""
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse -> fine
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(x) for conv, x in zip(self.fpn_out, laterals)]

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """features: list of (B, C_i, H_i, W_i), finest first -> (B, num_classes, H_0, W_0)."""
        size = features[0].shape[-2:]
        out = None
        for level, (x, stages) in enumerate(zip(self._pyramid(features), self.scale_heads)):
            for stage in stages:
                x = stage(x)
                if level > 0:
                    x = upsample2x(x)
            if x.shape[-2:] != size:  # odd input sizes: strides do not divide exactly
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out = x if out is None else out + x  # (B, channels, H_0, W_0)
        return self.classifier(self.dropout(out))


HEADS = {"linear": LinearHead, "pup": ProgressiveUpsamplingHead, "fpn": SemanticFPNHead}
