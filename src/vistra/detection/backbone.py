"""The detector's backbone: any vistra backbone + the padding mask + a 2-D position encoding per feature level.

Works for every backbone that publishes `forward_pyramid(x, out_indices)` and `feature_info` (ResNet, PVT, ViT):
the image mask (True = padding) reaches each level by nearest interpolation, as the official DETR code.

Module names, and how facebookresearch/detr's keys map onto them (checkpoints/convert_detr.py does this):
    backbone.body.*                 <- backbone.0.body.*   (the ResNet, torchvision names; no fc)
    backbone.position_embedding.*   <- backbone.1.*        (row_embed / col_embed of the learned encoding only)
Every trainable backbone parameter lives under `backbone.body.`, so the engine's backbone learning rate is the
glob `backbone.*` (DETR: lr 1e-5 against 1e-4).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

# ResNet parameters the official code never trains (the stem and the first stage); see freeze_stem below.
_RESNET_FROZEN_PREFIXES = ("conv1.", "bn1.", "layer1.")


def downsample_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Image mask (B, H, W) bool -> (B, h, w) bool by nearest interpolation (official DETR)."""
    return F.interpolate(mask[None].float(), size=tuple(size)).to(torch.bool)[0]


class DetectionBackbone(nn.Module):
    """body (a vistra backbone) -> feature maps, masks and position encodings of the levels in out_indices.

    Args:
        body: a model with forward_pyramid and feature_info (build it with num_classes=0: the head is unused).
        out_indices: which of body.feature_info's levels to return (negative counts from the end).
        position_embedding: a module mapping a mask (B, h, w) to (B, D, h, w), or None for no encoding.
        train_body: False freezes the whole body (official lr_backbone = 0).
        freeze_stem: for ResNet bodies, freeze conv1 / bn1 / layer1 as the official code does.
    """

    def __init__(self, body: nn.Module, out_indices: Sequence[int] = (-1,),
                 position_embedding: nn.Module | None = None, train_body: bool = True, freeze_stem: bool = True):
        super().__init__()
        levels = len(body.feature_info)
        self.out_indices = tuple(i % levels for i in out_indices)
        self.body = body
        self.position_embedding = position_embedding
        self.num_channels = [body.feature_info[i]["num_chs"] for i in self.out_indices]
        self.strides = [body.feature_info[i]["reduction"] for i in self.out_indices]
        for name, p in self.body.named_parameters():
            stem = getattr(body, "arch", None) == "resnet" and name.startswith(_RESNET_FROZEN_PREFIXES)
            if not train_body or (freeze_stem and stem):
                p.requires_grad_(False)

    @property
    def size_divisibility(self) -> int:
        """Input sides must be multiples of this (ViT / PVT patch embeddings); 1 when any size works."""
        arch = getattr(self.body, "arch", None)
        if arch == "vit":
            return self.body.patch_size
        if arch == "pvt":  # non-overlapping 4x4 then 2x2 patches
            return 32
        return 1

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[torch.Tensor | None]]:
        """images (B, 3, H, W), mask (B, H, W) bool True = padding, or None (no padding) ->
        features [(B, C_l, H_l, W_l)], masks [(B, H_l, W_l) or None], positions [(B, D, H_l, W_l) float32 or None].

        With mask None the masks are None and the positions are computed for an all-valid map.
        """
        feats = self.body.forward_pyramid(images, self.out_indices)
        masks, pos = [], []
        for f in feats:
            m = None if mask is None else downsample_mask(mask, f.shape[-2:])
            masks.append(m)
            if self.position_embedding is None:
                pos.append(None)
            else:
                full = m if m is not None else torch.zeros(f.shape[0], *f.shape[-2:], dtype=torch.bool, device=f.device)
                pos.append(self.position_embedding(full))
        return feats, masks, pos
