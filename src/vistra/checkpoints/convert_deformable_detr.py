"""Deformable DETR checkpoints from fundamentalvision/Deformable-DETR and Hugging Face, renamed to vistra's.

vistra's names (detection/deformable_detr.py) are the official ones except the backbone prefix and shared heads:

vistra name                                <- official                          <- Hugging Face (v4 Hub file; v5)
backbone.body.*                            <- backbone.0.body.*                 <- model.backbone.conv_encoder.model.*
                                                                                   (v5: model.backbone.model.*)
backbone.position_embedding.{row,col}_embed <- backbone.1.*                     <- model.backbone.position_embedding.
                                                                                   {row,column}_embeddings
input_proj.l.{0,1}                         <- same                              <- model.input_proj.l.{0,1}
query_embed                                <- same                              <- model.query_position_embeddings
transformer.level_embed / reference_points <- same                              <- model.level_embed / reference_points
transformer.enc_output(_norm), pos_trans(_norm) <- same                         <- model.* (two-stage)
transformer.encoder.layers.i.               <- same                              <- model.encoder.layers.i.
  self_attn.{sampling_offsets, attention_weights, value_proj, output_proj}        self_attn.* (same four)
  norm1, linear1, linear2, norm2                                                  self_attn_layer_norm, fc1 (v5
                                                                                  mlp.fc1), fc2, final_layer_norm
transformer.decoder.layers.i.               <- same                              <- model.decoder.layers.i.
  self_attn.in_proj_{weight,bias}, out_proj                                       self_attn.{q,k,v}_proj (concatenated),
                                                                                  out_proj (v5 o_proj)
  cross_attn.*                                                                    encoder_attn.*
  norm2 (after self-attn), norm1 (after cross-attn), norm3                        self_attn_layer_norm,
                                                                                  encoder_attn_layer_norm, final_layer_norm
class_embed.i, bbox_embed.i.layers.j       <- same                              <- same

Heads: both sources list the shared head (no box refinement) once per decoder layer, and the refinement heads a
second time under (model.)transformer.decoder.{bbox,class}_embed. vistra keeps each tensor once: the decoder copies
are dropped, and heads that are all equal to head 0 (and have no decoder copy) become class_embed.0 / bbox_embed.0.
"""
from __future__ import annotations

import re

import torch

from vistra.checkpoints.convert_detr import convert_hf_names, hf_backbone_key

_HF_TOP = [
    ("model.query_position_embeddings.", "query_embed."),
    ("model.input_proj.", "input_proj."),
    ("model.level_embed", "transformer.level_embed"),
    ("model.reference_points.", "transformer.reference_points."),
    ("model.enc_output.", "transformer.enc_output."),
    ("model.enc_output_norm.", "transformer.enc_output_norm."),
    ("model.pos_trans.", "transformer.pos_trans."),
    ("model.pos_trans_norm.", "transformer.pos_trans_norm."),
]
_HF_LAYER = {
    "encoder": {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"},
    "decoder": {"self_attn_layer_norm": "norm2", "encoder_attn_layer_norm": "norm1", "final_layer_norm": "norm3"},
}
_HF_FFN = {"fc1": "linear1", "fc2": "linear2", "mlp.fc1": "linear1", "mlp.fc2": "linear2"}
_DECODER_HEAD_COPY = re.compile(r"^(?:model\.decoder|transformer\.decoder)\.(?:bbox|class)_embed\.")
_HEAD = re.compile(r"^(class_embed|bbox_embed)\.(\d+)\.(.*)$")


def detect_deformable_detr_format(state_dict: dict[str, torch.Tensor]) -> str | None:
    """"deformable_detr_official", "deformable_detr_hf", or None (not Deformable DETR, or vistra's own names)."""
    keys = state_dict.keys()
    if not any("sampling_offsets" in k for k in keys):
        return None
    if any(k.startswith("model.encoder.layers.") or k.startswith("encoder.layers.") for k in keys) and any(
            k.endswith("level_embed") and not k.startswith("transformer.") for k in keys):
        return "deformable_detr_hf"
    if "transformer.level_embed" in keys and not any(k.startswith("backbone.body.") for k in keys):
        return "deformable_detr_official"
    return None


def convert_deformable_detr_official(state_dict: dict[str, torch.Tensor],
                                     dropped: list[str] | None = None) -> dict[str, torch.Tensor]:
    """fundamentalvision/Deformable-DETR state dict (the tensors under "model") -> vistra names."""
    out = {}
    for k, v in state_dict.items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.startswith("backbone.0.body."):
            k = "backbone.body." + k.removeprefix("backbone.0.body.")
        elif k.startswith("backbone.1."):
            k = "backbone.position_embedding." + k.removeprefix("backbone.1.")
        out[k] = v
    return dedupe_heads(out, dropped)


def _hf_layer_key(stack: str, rest: str) -> str:
    module, _, param = rest.rpartition(".")
    if module in _HF_LAYER[stack]:
        return f"{_HF_LAYER[stack][module]}.{param}"
    if module in _HF_FFN:
        return f"{_HF_FFN[module]}.{param}"
    if stack == "decoder" and module.startswith("encoder_attn."):
        return "cross_attn." + rest.removeprefix("encoder_attn.")
    if module in ("self_attn.o_proj", "self_attn.out_proj") and stack == "decoder":
        return f"self_attn.out_proj.{param}"
    return rest


def _hf_key(k: str) -> str:
    backbone = hf_backbone_key(k)
    if backbone is not None:
        return backbone
    for old, new in _HF_TOP:
        if k.startswith(old):
            return new + k.removeprefix(old)
    m = re.match(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.*)$", k)
    if m:
        return f"transformer.{m[1]}.layers.{m[2]}.{_hf_layer_key(m[1], m[3])}"
    return k


def convert_deformable_detr_hf(state_dict: dict[str, torch.Tensor],
                               dropped: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Hugging Face DeformableDetrForObjectDetection (or DeformableDetrModel) state dict -> vistra names.

    The decoder self-attention's q / k / v projections are concatenated into in_proj_weight / in_proj_bias.
    Raises ValueError when a layer lacks one of them.
    """
    out = convert_hf_names(state_dict, _hf_key, r"^(transformer\.decoder\.layers\.\d+\.self_attn)\.([qkv])_proj\."
                                                r"(weight|bias)$", "Deformable DETR")
    return dedupe_heads(out, dropped)


def dedupe_heads(state_dict: dict[str, torch.Tensor], dropped: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Drop the decoder's copies of the refinement / two-stage heads; keep only head 0 when every head equals it
    and there were no decoder copies (the official shared head, listed once per decoder layer)."""
    copies = [k for k in state_dict if _DECODER_HEAD_COPY.match(k)]
    out = {k: v for k, v in state_dict.items() if k not in copies}
    moved = []
    for k in copies:  # a file that stores the tied heads only under the decoder (transformers v5): move them
        top = _DECODER_HEAD_COPY.sub(lambda m: m[0].split(".")[-2] + ".", k)
        if top not in out:
            out[top] = state_dict[k]
            moved.append(k)
    heads: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    for k, v in out.items():
        m = _HEAD.match(k)
        if m:
            heads.setdefault(m[1], {}).setdefault(int(m[2]), {})[m[3]] = v
    shared = not copies and heads and all(
        set(h[i]) == set(h[0]) and all(torch.equal(h[i][p], h[0][p]) for p in h[0])
        for h in heads.values() if 0 in h for i in h)
    extra = [k for k in out if (m := _HEAD.match(k)) and m[2] != "0"] if shared else []
    if dropped is not None:
        dropped.extend([k for k in copies if k not in moved] + extra)
    out = {k: v for k, v in out.items() if k not in set(extra)}
    if not shared and len(heads) == 2:  # files that store tied heads once (transformers v5 ties the refinement
        # model's class heads to class_embed.0 and saves that one only): restore the omitted copies
        count = max(len(h) for h in heads.values())
        for family, h in heads.items():
            if len(h) == 1 and 0 in h and count > 1:
                out.update({f"{family}.{i}.{p}": v for i in range(1, count) for p, v in h[0].items()})
    return out


def convert_deformable_detr_state_dict(state_dict: dict[str, torch.Tensor], fmt: str | None = None,
                                       dropped: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Detect the format (unless given) and convert; a dict already in vistra's names is returned unchanged."""
    fmt = fmt or detect_deformable_detr_format(state_dict)
    if fmt == "deformable_detr_official":
        return convert_deformable_detr_official(state_dict, dropped)
    if fmt == "deformable_detr_hf":
        return convert_deformable_detr_hf(state_dict, dropped)
    if fmt is None:
        return dict(state_dict)
    raise ValueError(f"unknown Deformable DETR checkpoint format {fmt!r}")
