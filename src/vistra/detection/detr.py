"""DETR: detection as set prediction (Carion et al., ECCV 2020) — the model; losses live in criterion.py.

backbone (any vistra backbone) -> 1x1 input_proj -> transformer (num_queries learned queries) -> per decoder layer,
class logits (num_classes + 1, the last is "no object") and sigmoid boxes (cx, cy, w, h) in [0, 1].

Module names are facebookresearch/detr's (input_proj, query_embed, class_embed, bbox_embed.layers.{0,1,2},
transformer.*), except the backbone: `backbone.body` / `backbone.position_embedding` for the official
`backbone.0.body` / `backbone.1` (see backbone.py and checkpoints/convert_detr.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import vistra.backbones.resnet  # noqa: F401  (registers the ResNet presets the detectors are built on)
from vistra.detection.backbone import DetectionBackbone
from vistra.detection.transformer import Transformer
from vistra.layers.position2d import build_position_encoding
from vistra.registry import get_builder, register_model


@dataclass
class DETRConfig:
    """The official main.py argument names (plus train_backbone / backbone_kwargs / pretrained_backbone)."""

    backbone: str = "resnet50"  # any registered backbone: resnet18/34/50/101, pvt_v2_b*, vit_*
    num_classes: int = 91  # COCO: the largest category id + 1; the head has num_classes + 1 outputs
    num_queries: int = 100
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    pre_norm: bool = False
    dilation: bool = False  # DC5: dilation instead of stride in the last ResNet stage
    position_embedding: str = "sine"  # "sine" or "learned"
    aux_loss: bool = True  # also return the earlier decoder layers' predictions ("aux_outputs")
    train_backbone: bool = True  # False freezes the backbone (official lr_backbone = 0)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra overrides for the backbone builder
    pretrained_backbone: str | None = None  # path to backbone weights (any format vistra reads), head ignored


class MLP(nn.Module):
    """Linear layers with ReLU between them (official name layers.{i}): the box head."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) -> (..., output_dim)."""
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def pad_images(images: Sequence[torch.Tensor], size_divisibility: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Differently sized images [(3, H_i, W_i)] -> batch (B, 3, H, W) zero-padded at the bottom / right, and the
    mask (B, H, W) bool, True on padding. H, W: the largest sides, rounded up to a multiple of size_divisibility."""
    if not len(images):
        raise ValueError("pad_images needs at least one image")
    H = max(im.shape[-2] for im in images)
    W = max(im.shape[-1] for im in images)
    H, W = -(-H // size_divisibility) * size_divisibility, -(-W // size_divisibility) * size_divisibility
    first = images[0]
    batch = first.new_zeros(len(images), first.shape[0], H, W)
    mask = torch.ones(len(images), H, W, dtype=torch.bool, device=first.device)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
        mask[i, : im.shape[-2], : im.shape[-1]] = False
    return batch, mask


def _pad_to_multiple(images: torch.Tensor, mask: torch.Tensor | None, k: int
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pad a batch (and its mask, created if needed) at the bottom / right so both sides are multiples of k."""
    H, W = images.shape[-2:]
    ph, pw = -H % k, -W % k
    if not ph and not pw:
        return images, mask
    if mask is None:
        mask = torch.zeros(images.shape[0], H, W, dtype=torch.bool, device=images.device)
    return F.pad(images, (0, pw, 0, ph)), F.pad(mask, (0, pw, 0, ph), value=True)


class DETR(nn.Module):
    """DETR detector. forward(images, mask=None) -> {"pred_logits", "pred_boxes"[, "aux_outputs"]}; see forward."""

    arch = "detr"

    def __init__(self, backbone: DetectionBackbone, transformer: Transformer, num_classes: int, num_queries: int,
                 aux_loss: bool = True):
        super().__init__()
        d = transformer.d_model
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.aux_loss = aux_loss
        self.backbone = backbone
        self.transformer = transformer
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], d, kernel_size=1)
        self.query_embed = nn.Embedding(num_queries, d)
        self.class_embed = nn.Linear(d, num_classes + 1)
        self.bbox_embed = MLP(d, d, 4, 3)

    def prepare_inputs(self, images: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch (B, 3, H, W) with optional mask (B, H, W), or a list of (3, H_i, W_i) images -> batch and mask
        (None when nothing is padded), padded so the backbone accepts the size."""
        k = self.backbone.size_divisibility
        if not isinstance(images, torch.Tensor):
            if mask is not None:
                raise ValueError("pass a mask only with a batch tensor; a list of images is padded (and masked) inside")
            if len({tuple(im.shape[-2:]) for im in images}) == 1:
                images = torch.stack(list(images))
            else:
                images, mask = pad_images(images, k)
        if images.ndim != 4:
            raise ValueError(f"images must be (B, 3, H, W) or a list of (3, H, W), got shape {tuple(images.shape)}")
        if mask is not None and mask.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match images {tuple(images.shape)}: "
                             "expected (B, H, W)")
        return _pad_to_multiple(images, None if mask is None else mask.to(torch.bool), k)

    def decode(self, feature: torch.Tensor, mask: torch.Tensor | None, pos: torch.Tensor) -> torch.Tensor:
        """Backbone map (B, C, h, w), its mask (B, h, w) or None, position (B, D, h, w) -> decoder outputs
        (dec_layers, B, Q, D)."""
        src = self.input_proj(feature)  # (B, D, h, w)
        hs, _ = self.transformer(src, mask, self.query_embed.weight, pos)
        return hs

    def forward_heads(self, hs: torch.Tensor) -> dict[str, Any]:
        """Decoder outputs (L, B, Q, D) -> the output dict of the last layer, plus the L - 1 earlier ones."""
        logits = self.class_embed(hs)  # (L, B, Q, C + 1)
        boxes = self.bbox_embed(hs).sigmoid()  # (L, B, Q, 4)
        out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        return out

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor | None = None
                ) -> dict[str, Any]:
        """Detect objects.

        Args:
            images: (B, 3, H, W) float, or a list of (3, H_i, W_i) (padded at the bottom / right inside).
            mask: (B, H, W) bool, True = padding; None = no padding.
        Returns:
            plain dict: "pred_logits" (B, Q, num_classes + 1), "pred_boxes" (B, Q, 4) cxcywh in [0, 1] relative
            to each image's unpadded size, and with aux_loss "aux_outputs": a list of dec_layers - 1 dicts with
            the same two keys, earliest layer first.
        """
        images, mask = self.prepare_inputs(images, mask)
        feats, masks, pos = self.backbone(images, mask)
        return self.forward_heads(self.decode(feats[-1], masks[-1], pos[-1]))


def build_detr(config: DETRConfig) -> DETR:
    """A DETR from its config: the backbone comes from the registry (ResNets with FrozenBatchNorm2d)."""
    c = config
    body_kwargs = dict(c.backbone_kwargs, num_classes=0)
    if c.backbone.startswith("resnet"):
        body_kwargs.setdefault("norm_layer", "frozen")
        body_kwargs["replace_stride_with_dilation"] = [False, False, c.dilation]
    elif c.dilation:
        raise ValueError(f"dilation (DC5) needs a ResNet backbone, got {c.backbone!r}")
    body = get_builder(c.backbone)(**body_kwargs)
    if not hasattr(body, "forward_pyramid"):
        raise ValueError(f"backbone {c.backbone!r} has no forward_pyramid: it cannot feed a detector")
    if c.pretrained_backbone is not None:  # e.g. torchvision ImageNet weights; the classifier is not used
        from vistra.checkpoints import load_pretrained, load_state_dict

        weights = load_state_dict(c.pretrained_backbone, body)
        load_pretrained(body, {k: v for k, v in weights.items() if not k.startswith(("fc.", "head."))})
    position = build_position_encoding(c.position_embedding, c.hidden_dim)
    backbone = DetectionBackbone(body, (-1,), position, train_body=c.train_backbone)
    transformer = Transformer(c.hidden_dim, c.nheads, c.enc_layers, c.dec_layers, c.dim_feedforward, c.dropout,
                              c.pre_norm)
    model = DETR(backbone, transformer, c.num_classes, c.num_queries, c.aux_loss)
    model.config = c
    return model


def _detr(**kw) -> DETR:
    if "lr_backbone" in kw:  # the official flag: only its sign matters to the model (0 = frozen backbone)
        kw["train_backbone"] = float(kw.pop("lr_backbone")) > 0
    return build_detr(DETRConfig(**kw))


@register_model
def detr(**kw) -> DETR:
    """Generic DETR taking the official argument names, e.g. backbone="resnet18", hidden_dim=64, enc_layers=2."""
    return _detr(**kw)


@register_model
def detr_resnet50(**kw) -> DETR:
    """DETR R50 (41.3M parameters; COCO AP 42.0 at 500 epochs)."""
    return _detr(**{"backbone": "resnet50", **kw})


@register_model
def detr_resnet101(**kw) -> DETR:
    """DETR R101 (60.3M parameters; COCO AP 43.5)."""
    return _detr(**{"backbone": "resnet101", **kw})


@register_model
def detr_resnet50_dc5(**kw) -> DETR:
    """DETR DC5-R50: dilated last stage, C5 at stride 16 (COCO AP 43.3)."""
    return _detr(**{"backbone": "resnet50", "dilation": True, **kw})


@register_model
def detr_resnet101_dc5(**kw) -> DETR:
    """DETR DC5-R101 (COCO AP 44.9)."""
    return _detr(**{"backbone": "resnet101", "dilation": True, **kw})


@register_model
def detr_vit_small_patch16(**kw) -> DETR:
    """DETR on ViT-S/16's last patch-token map (384 channels, stride 16)."""
    return _detr(**{"backbone": "vit_small_patch16_224", **kw})


@register_model
def detr_pvt_v2_b2(**kw) -> DETR:
    """DETR on PVTv2-b2's last stage (512 channels, stride 32)."""
    return _detr(**{"backbone": "pvt_v2_b2", **kw})
