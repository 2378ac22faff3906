"""Deformable DETR (Zhu et al., ICLR 2021) — the model; losses live in criterion.py (sigmoid focal, two-stage).

backbone (any vistra backbone: ResNet, PVTv2, ViT) -> its last levels + extra stride-2 levels, each projected to
hidden_dim with GroupNorm -> deformable transformer -> per decoder layer, sigmoid class logits (num_classes, no
"no object") and boxes (cx, cy, w, h) in [0, 1] predicted relative to the layer's reference point / box.

Variants: multi-scale (4 levels) or single-scale (1), iterative box refinement (each decoder layer refines the
previous layer's boxes; one head per layer), two-stage (the encoder proposes boxes, the top-k become queries).

Module names are fundamentalvision/Deformable-DETR's (input_proj.l.{0,1}, query_embed, class_embed.i,
bbox_embed.i.layers.j, transformer.*), except: the backbone (backbone.body / backbone.position_embedding, as
vistra's DETR), and shared heads. The official code lists the same head module once per decoder layer when the
heads are shared (no refinement) and lists the refinement heads twice (also under transformer.decoder.bbox_embed);
vistra stores each tensor once: `class_embed.0` / `bbox_embed.0` only when shared. checkpoints/
convert_deformable_detr.py maps official and Hugging Face files onto these names.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import vistra.backbones.resnet  # noqa: F401  (registers the backbones the detectors are built on)
from vistra.detection.backbone import DetectionBackbone, downsample_mask
from vistra.detection.deformable_transformer import DeformableTransformer, inverse_sigmoid
from vistra.detection.detr import MLP, DETR
from vistra.layers.position2d import build_position_encoding
from vistra.registry import get_builder, register_model

# Learning-rate multipliers of the official recipe (lr 2e-4): parameter-name patterns -> factor. The engine's
# build_param_groups takes them as they are (a plain prefix, or a glob).
LR_MULTIPLIERS = {"backbone": 0.1, "*sampling_offsets*": 0.1, "*reference_points*": 0.1}


@dataclass
class DeformableDETRConfig:
    """The official main.py argument names (plus train_backbone / backbone_kwargs / pretrained_backbone /
    backbone_levels / deform_attn_impl)."""

    backbone: str = "resnet50"  # any registered backbone: resnet18/34/50/101, pvt_v2_b*, vit_*
    num_classes: int = 91  # COCO: the largest category id + 1; sigmoid head with num_classes outputs
    num_queries: int = 300
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.1
    dilation: bool = False  # DC5: dilation instead of stride in the last ResNet stage
    position_embedding: str = "sine"  # "sine" (with Deformable DETR's -0.5 offset) or "learned"
    num_feature_levels: int = 4
    enc_n_points: int = 4
    dec_n_points: int = 4
    with_box_refine: bool = False
    two_stage: bool = False
    aux_loss: bool = True
    train_backbone: bool = True  # False freezes the backbone (official lr_backbone = 0)
    backbone_levels: int | None = None  # backbone maps used (its last ones); default 3 (1 single-scale / ViT)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained_backbone: str | None = None  # path to backbone weights (any format vistra reads), head ignored
    deform_attn_impl: str = "auto"  # "auto", "native", "fast" or "reference" (layers/deform_attn.py)


def _input_proj(in_channels: int, d: int, extra: bool) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, d, kernel_size=3, stride=2, padding=1) if extra else nn.Conv2d(in_channels, d, 1)
    return nn.Sequential(conv, nn.GroupNorm(32, d))


class DeformableDETR(nn.Module):
    """Deformable DETR. forward(images, mask=None) -> {"pred_logits", "pred_boxes", "aux_outputs"[, "enc_outputs"]}."""

    arch = "deformable_detr"

    def __init__(self, backbone: DetectionBackbone, transformer: DeformableTransformer, num_classes: int,
                 num_queries: int, num_feature_levels: int, aux_loss: bool = True, with_box_refine: bool = False,
                 two_stage: bool = False):
        super().__init__()
        d = transformer.d_model
        self.num_classes, self.num_queries, self.num_feature_levels = num_classes, num_queries, num_feature_levels
        self.aux_loss, self.with_box_refine, self.two_stage = aux_loss, with_box_refine, two_stage
        self.backbone = backbone
        self.transformer = transformer
        chans = list(backbone.num_channels)
        if len(chans) > num_feature_levels:
            raise ValueError(f"{len(chans)} backbone levels for num_feature_levels={num_feature_levels}")
        extra = [chans[-1]] + [d] * (num_feature_levels - len(chans) - 1)
        self.input_proj = nn.ModuleList([_input_proj(c, d, False) for c in chans]
                                        + [_input_proj(c, d, True) for c in extra[: num_feature_levels - len(chans)]])
        if not two_stage:
            self.query_embed = nn.Embedding(num_queries, d * 2)
        class_head, box_head = nn.Linear(d, num_classes), MLP(d, d, 4, 3)
        self._init_heads(class_head, box_head)
        num_pred = transformer.decoder.num_layers + (1 if two_stage else 0)
        copies = num_pred if with_box_refine else 1
        self.class_embed = nn.ModuleList(copy.deepcopy(class_head) for _ in range(copies))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(box_head) for _ in range(copies))
        if with_box_refine:
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            transformer.decoder.bbox_embed = list(self.bbox_embed)  # plain list: not registered twice
        else:
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        if two_stage:
            transformer.class_embed = [self.class_head(i) for i in range(num_pred)]
            transformer.bbox_embed = [self.box_head(i) for i in range(num_pred)]
            for head in self.bbox_embed:
                nn.init.zeros_(head.layers[-1].bias[2:])

    @staticmethod
    def _init_heads(class_head: nn.Linear, box_head: MLP) -> None:
        prior_prob = 0.01
        nn.init.constant_(class_head.bias, -math.log((1 - prior_prob) / prior_prob))
        nn.init.zeros_(box_head.layers[-1].weight)
        nn.init.zeros_(box_head.layers[-1].bias)

    def class_head(self, i: int) -> nn.Module:
        """The class head of prediction i (decoder layer i; dec_layers = the two-stage proposals)."""
        return self.class_embed[i if self.with_box_refine else 0]

    def box_head(self, i: int) -> nn.Module:
        """The box head of prediction i."""
        return self.bbox_embed[i if self.with_box_refine else 0]

    @property
    def size_divisibility(self) -> int:
        return self.backbone.size_divisibility

    prepare_inputs = DETR.prepare_inputs

    def levels(self, images: torch.Tensor, mask: torch.Tensor
               ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """images (B, 3, H, W), mask (B, H, W) -> per level: projected map (B, D, H_l, W_l), mask (B, H_l, W_l),
        position (B, D, H_l, W_l); the backbone's levels then the extra stride-2 ones."""
        feats, masks, pos = self.backbone(images, mask)
        srcs = [proj(f) for proj, f in zip(self.input_proj, feats)]
        for lvl in range(len(feats), self.num_feature_levels):
            src = self.input_proj[lvl](feats[-1] if lvl == len(feats) else srcs[-1])  # (B, D, H_l, W_l)
            m = downsample_mask(mask, src.shape[-2:])
            srcs.append(src)
            masks.append(m)
            pos.append(self.backbone.position_embedding(m).to(src.dtype))
        return srcs, masks, pos

    def forward_heads(self, hs: torch.Tensor, init_reference: torch.Tensor, references: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """hs (L, B, Q, D), init_reference (B, Q, 2 or 4), references (L, B, Q, 2 or 4) -> logits (L, B, Q, C),
        boxes (L, B, Q, 4): each layer's box is predicted relative to the reference it attended from."""
        logits, boxes = [], []
        for lvl in range(hs.shape[0]):
            reference = inverse_sigmoid(init_reference if lvl == 0 else references[lvl - 1])
            delta = self.box_head(lvl)(hs[lvl])  # (B, Q, 4)
            if reference.shape[-1] == 4:
                coord = delta + reference
            else:
                coord = torch.cat([delta[..., :2] + reference, delta[..., 2:]], -1)
            logits.append(self.class_head(lvl)(hs[lvl]))
            boxes.append(coord.sigmoid())
        return torch.stack(logits), torch.stack(boxes)

    def forward(self, images: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor | None = None
                ) -> dict[str, Any]:
        """Detect objects.

        Args:
            images: (B, 3, H, W) float, or a list of (3, H_i, W_i) (padded at the bottom / right inside).
            mask: (B, H, W) bool, True = padding; None = no padding.
        Returns:
            plain dict: "pred_logits" (B, Q, num_classes) sigmoid logits, "pred_boxes" (B, Q, 4) cxcywh in [0, 1]
            relative to each image's unpadded size; with aux_loss "aux_outputs", dec_layers - 1 dicts with the same
            keys (earliest layer first); two-stage: "enc_outputs" {"pred_logits" (B, S, num_classes), "pred_boxes"
            (B, S, 4)}, the encoder's per-pixel proposals.
        """
        images, mask = self.prepare_inputs(images, mask)
        if mask is None:
            mask = torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device)
        srcs, masks, pos = self.levels(images, mask)
        query = None if self.two_stage else self.query_embed.weight
        hs, init_ref, refs, enc_class, enc_coord = self.transformer(srcs, masks, pos, query)
        logits, boxes = self.forward_heads(hs, init_ref, refs)
        out: dict[str, Any] = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.aux_loss:
            out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
        if self.two_stage:
            out["enc_outputs"] = {"pred_logits": enc_class, "pred_boxes": enc_coord.sigmoid()}
        return out

    def set_deform_attn_impl(self, impl: str) -> None:
        """Run every deformable attention with another implementation ("auto", "native", "fast", "reference")."""
        self.transformer.set_impl(impl)
        self.config.deform_attn_impl = impl

    def lr_multipliers(self) -> dict[str, float]:
        """The official recipe's learning-rate factors by parameter-name pattern (backbone, sampling offsets,
        reference points), for build_param_groups: only patterns that match a trainable parameter of this model
        (a frozen backbone or the two-stage model, which has no reference_points layer, drop theirs)."""
        import fnmatch

        names = [n for n, p in self.named_parameters() if p.requires_grad]
        return {pat: f for pat, f in LR_MULTIPLIERS.items()
                if any(n.startswith(pat + ".") or fnmatch.fnmatchcase(n, pat) for n in names)}


def _backbone_levels(c: DeformableDETRConfig, body: nn.Module) -> tuple[int, ...]:
    available = len(body.feature_info)
    default = 1 if c.num_feature_levels == 1 or getattr(body, "arch", None) == "vit" else 3
    n = c.backbone_levels or default
    if not 1 <= n <= min(available, c.num_feature_levels):
        raise ValueError(f"backbone_levels={n}: the backbone has {available} levels and the model "
                         f"num_feature_levels={c.num_feature_levels}")
    return tuple(range(available - n, available))


def build_deformable_detr(config: DeformableDETRConfig) -> DeformableDETR:
    """A Deformable DETR from its config: the backbone comes from the registry (ResNets with FrozenBatchNorm2d)."""
    c = config
    if c.hidden_dim % 32:
        raise ValueError(f"hidden_dim must be a multiple of 32 (GroupNorm(32) after each input projection), "
                         f"got {c.hidden_dim}")
    body_kwargs = dict(c.backbone_kwargs, num_classes=0)
    if c.backbone.startswith("resnet"):
        body_kwargs.setdefault("norm_layer", "frozen")
        body_kwargs["replace_stride_with_dilation"] = [False, False, c.dilation]
    elif c.dilation:
        raise ValueError(f"dilation (DC5) needs a ResNet backbone, got {c.backbone!r}")
    body = get_builder(c.backbone)(**body_kwargs)
    if not hasattr(body, "forward_pyramid"):
        raise ValueError(f"backbone {c.backbone!r} has no forward_pyramid: it cannot feed a detector")
    if c.pretrained_backbone is not None:
        from vistra.checkpoints import load_pretrained, load_state_dict

        weights = load_state_dict(c.pretrained_backbone, body)
        load_pretrained(body, {k: v for k, v in weights.items() if not k.startswith(("fc.", "head."))})
    position = build_position_encoding(c.position_embedding, c.hidden_dim, offset=-0.5)
    backbone = DetectionBackbone(body, _backbone_levels(c, body), position, train_body=c.train_backbone)
    transformer = DeformableTransformer(
        c.hidden_dim, c.nheads, c.enc_layers, c.dec_layers, c.dim_feedforward, c.dropout, c.num_feature_levels,
        c.dec_n_points, c.enc_n_points, c.two_stage, c.num_queries, c.deform_attn_impl)
    model = DeformableDETR(backbone, transformer, c.num_classes, c.num_queries, c.num_feature_levels, c.aux_loss,
                           c.with_box_refine, c.two_stage)
    model.config = c
    return model


def _deformable(**kw) -> DeformableDETR:
    if "lr_backbone" in kw:  # the official flag: only its sign matters to the model (0 = frozen backbone)
        kw["train_backbone"] = float(kw.pop("lr_backbone")) > 0
    if "two_stage_num_proposals" in kw:  # official: must equal num_queries
        proposals = kw.pop("two_stage_num_proposals")
        if proposals != kw.get("num_queries", proposals):
            raise ValueError(f"two_stage_num_proposals={proposals} must equal num_queries={kw['num_queries']}")
        kw.setdefault("num_queries", proposals)
    return build_deformable_detr(DeformableDETRConfig(**kw))


@register_model
def deformable_detr(**kw) -> DeformableDETR:
    """Generic Deformable DETR taking the official argument names (num_feature_levels, enc_n_points, dec_n_points,
    with_box_refine, two_stage, backbone="resnet18", hidden_dim=64, ...)."""
    return _deformable(**kw)


@register_model
def deformable_detr_resnet50(**kw) -> DeformableDETR:
    """Deformable DETR R50, multi-scale (COCO AP 44.5 at 50 epochs)."""
    return _deformable(**{"backbone": "resnet50", **kw})


@register_model
def deformable_detr_resnet50_single_scale(**kw) -> DeformableDETR:
    """Deformable DETR R50, single-scale: C5 only (COCO AP 39.4)."""
    return _deformable(**{"backbone": "resnet50", "num_feature_levels": 1, **kw})


@register_model
def deformable_detr_resnet50_refine(**kw) -> DeformableDETR:
    """Deformable DETR R50 + iterative box refinement (COCO AP 46.2)."""
    return _deformable(**{"backbone": "resnet50", "with_box_refine": True, **kw})


@register_model
def deformable_detr_resnet50_two_stage(**kw) -> DeformableDETR:
    """Deformable DETR R50 + iterative box refinement + two-stage (COCO AP 46.9)."""
    return _deformable(**{"backbone": "resnet50", "with_box_refine": True, "two_stage": True, **kw})


def _pvt_v2_preset(variant: str):
    def preset(**kw) -> DeformableDETR:
        return _deformable(**{"backbone": f"pvt_v2_{variant}", **kw})

    preset.__name__ = f"deformable_detr_pvt_v2_{variant}"
    preset.__doc__ = (f"The PVTv2 detector: Deformable DETR (multi-scale) on PVTv2-{variant}'s stages 2-4 "
                      "(strides 8, 16, 32) plus one stride-2 level.")
    return register_model(preset)


for _variant in ("b0", "b1", "b2", "b3", "b4", "b5"):
    _pvt_v2_preset(_variant)
