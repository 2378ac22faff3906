"""DETR checkpoints from facebookresearch/detr and Hugging Face transformers, renamed to vistra's DETR.

vistra's names (detection/detr.py) are the official ones except the backbone prefix, so the official map is a
prefix change. Hugging Face renames nearly everything and splits the attention input projection; its ResNet is
either timm's (torchvision names, the Hub's facebook/detr-resnet-50) or its own ResNet (embedder / encoder.stages).

vistra name                               <- official                        <- Hugging Face (v4 Hub file; v5 memory)
backbone.body.{conv1,bn1,layer1..4}.*     <- backbone.0.body.*               <- model.backbone.conv_encoder.model.*
                                                                                (v5: model.backbone.model.*), timm or
                                                                                HF ResNet names (embedder, stages)
backbone.position_embedding.row_embed     <- backbone.1.row_embed            <- model.[backbone.]position_embedding
  (.col_embed)                               (.col_embed)                         .row_embeddings (.column_embeddings)
transformer.{encoder,decoder}.layers.i.   <- same                            <- model.{encoder,decoder}.layers.i.
  self_attn.in_proj_{weight,bias}                                                self_attn.{q,k,v}_proj (concatenated)
  self_attn.out_proj                                                             self_attn.out_proj (v5: o_proj)
  linear1 / linear2                                                              fc1 / fc2 (v5: mlp.fc1 / mlp.fc2)
  encoder norm1 / norm2                                                          self_attn_layer_norm / final_layer_norm
  decoder multihead_attn.*                                                       encoder_attn.*
  decoder norm1 / norm2 / norm3                                                  self_attn_layer_norm /
                                                                                 encoder_attn_layer_norm /
                                                                                 final_layer_norm
transformer.decoder.norm                  <- same                            <- model.decoder.layernorm
query_embed / input_proj                  <- same                            <- model.query_position_embeddings /
                                                                                model.input_projection
class_embed / bbox_embed.layers.j         <- same                            <- class_labels_classifier / bbox_predictor

Entry points for the checkpoint loader: detect_detr_format, convert_detr_official, convert_detr_hf, and
convert_detr_state_dict (detects, then converts). All take and return flat {name: tensor} dicts and never modify
their input.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch

# Hugging Face's own ResNet (ResNetBackbone) -> torchvision names.
_HF_RESNET_RULES = [
    (re.compile(r"^embedder\.embedder\.convolution\."), "conv1."),
    (re.compile(r"^embedder\.embedder\.normalization\."), "bn1."),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\."),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\."),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\."),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
    (re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\."),
     lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
]

# Modules inside one Hugging Face encoder / decoder layer -> official / vistra names (attention handled apart).
_HF_LAYER_MODULES = {
    "encoder": {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"},
    "decoder": {"self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm2", "final_layer_norm": "norm3"},
}
_HF_FFN_MODULES = {"fc1": "linear1", "fc2": "linear2", "mlp.fc1": "linear1", "mlp.fc2": "linear2"}
_HF_ATTN = re.compile(r"^(self_attn|encoder_attn)\.(q|k|v|o|out)_proj$")
_HF_TOP_RULES = [
    ("model.query_position_embeddings.", "query_embed."),
    ("model.input_projection.", "input_proj."),
    ("class_labels_classifier.", "class_embed."),
    ("bbox_predictor.", "bbox_embed."),
    ("model.decoder.layernorm.", "transformer.decoder.norm."),
]
_HF_BACKBONE_PREFIXES = ("model.backbone.conv_encoder.model.", "model.backbone.model.")
_HF_POSITION_PREFIXES = ("model.backbone.position_embedding.", "model.backbone.conv_encoder.position_embedding.",
                         "model.position_embedding.")


def detect_detr_format(state_dict: dict[str, torch.Tensor]) -> str | None:
    """"detr_official" (facebookresearch/detr), "detr_hf" (DetrForObjectDetection / DetrModel) or None.

    None also for Deformable DETR (official or HF: sampling_offsets / level_embed), which shares DETR's prefixes.
    """
    keys = state_dict.keys()
    if any("sampling_offsets" in k or "level_embed" in k for k in keys):
        return None
    if any(k.startswith(("backbone.0.body.", "detr.backbone.0.body.")) for k in keys) or (
        "query_embed.weight" in keys and any(k.startswith("transformer.encoder.layers.") for k in keys)
        and not any(k.startswith("backbone.body.") for k in keys)
    ):
        return "detr_official"
    if any(k.endswith("query_position_embeddings.weight") for k in keys) and any(
        re.match(r"^(model\.)?(encoder|decoder)\.layers\.\d+\.self_attn\.q_proj\.", k) for k in keys
    ):
        return "detr_hf"
    return None


def convert_detr_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """facebookresearch/detr state dict (the tensors under "model") -> vistra DETR names.

    backbone.0.body.* -> backbone.body.*, backbone.1.* -> backbone.position_embedding.*; num_batches_tracked is
    dropped; a "detr." prefix (panoptic checkpoints) is removed; everything else is already vistra's.
    """
    out = {}
    for k, v in state_dict.items():
        if k.endswith("num_batches_tracked"):
            continue
        k = k.removeprefix("detr.")
        if k.startswith("backbone.0.body."):
            k = "backbone.body." + k.removeprefix("backbone.0.body.")
        elif k.startswith("backbone.1."):
            k = "backbone.position_embedding." + k.removeprefix("backbone.1.")
        out[k] = v
    return out


def hf_resnet_key_to_torchvision(key: str) -> str:
    """A Hugging Face ResNet key (embedder.embedder.convolution.weight, encoder.stages.0.layers.0.layer.1...)
    -> torchvision's (conv1.weight, layer1.0.conv2...). Keys already in torchvision / timm form are returned as is.
    HF's bottleneck puts the stride in the 3x3 conv (ResNet v1.5), as torchvision, so the weights line up."""
    for pattern, repl in _HF_RESNET_RULES:
        if pattern.match(key):
            return pattern.sub(repl, key, count=1)
    return key


def _hf_layer_key(rest: str, stack: str) -> str:
    """Inside one HF encoder / decoder layer: "self_attn_layer_norm.weight" -> "norm1.weight",
    "encoder_attn.o_proj.bias" -> "multihead_attn.out_proj.bias", "encoder_attn.q_proj.weight" ->
    "multihead_attn.q_proj.weight" (q / k / v are concatenated later). Unknown names are returned as they are."""
    module, _, param = rest.rpartition(".")
    if module in _HF_LAYER_MODULES[stack]:
        return f"{_HF_LAYER_MODULES[stack][module]}.{param}"
    if module in _HF_FFN_MODULES:
        return f"{_HF_FFN_MODULES[module]}.{param}"
    m = _HF_ATTN.match(module)
    if m:
        attn = "self_attn" if m[1] == "self_attn" else "multihead_attn"
        proj = "out_proj" if m[2] in ("o", "out") else f"{m[2]}_proj"
        return f"{attn}.{proj}.{param}"
    return rest


def convert_detr_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face DetrForObjectDetection (or DetrModel) state dict -> vistra DETR names.

    The separate q / k / v projections are concatenated into in_proj_weight / in_proj_bias (order q, k, v, as
    nn.MultiheadAttention). Raises ValueError when a layer lacks one of q, k, v.
    """
    return convert_hf_names(state_dict, _convert_hf_key, r"^(.*\.(?:self_attn|multihead_attn))\.([qkv])_proj\."
                                                         r"(weight|bias)$", "DETR")


def convert_hf_names(state_dict: dict[str, torch.Tensor], key_fn: Callable[[str], str], qkv_pattern: str,
                     family: str) -> dict[str, torch.Tensor]:
    """A Hugging Face DETR-family state dict (with or without the detection wrapper's "model." prefix) ->
    vistra names by key_fn; the q / k / v projections whose new names match qkv_pattern (groups: attention
    module, q|k|v, weight|bias) are concatenated into in_proj_weight / in_proj_bias. BatchNorm step counters
    are dropped; a layer lacking one of q, k, v raises ValueError."""
    sd = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    if not any(k.startswith("model.") for k in sd):  # a bare DetrModel / DeformableDetrModel
        sd = {f"model.{k}": v for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        new = key_fn(k)
        m = re.match(qkv_pattern, new)
        if m:
            qkv.setdefault((m[1], m[3]), {})[m[2]] = v
        else:
            out[new] = v
    for (prefix, kind), parts in qkv.items():
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            lacking = ", ".join(f"{p}_proj.{kind}" for p in missing)
            raise ValueError(f"Hugging Face {family} checkpoint: {prefix} lacks {lacking}")
        out[f"{prefix}.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def hf_backbone_key(k: str) -> str | None:
    """A Hugging Face DETR-family backbone or position-embedding key -> vistra's; None for any other key."""
    for prefix in _HF_BACKBONE_PREFIXES:
        if k.startswith(prefix):
            return "backbone.body." + hf_resnet_key_to_torchvision(k.removeprefix(prefix))
    for prefix in _HF_POSITION_PREFIXES:
        if k.startswith(prefix):
            rest = k.removeprefix(prefix).replace("row_embeddings", "row_embed")
            return "backbone.position_embedding." + rest.replace("column_embeddings", "col_embed")
    return None


def _convert_hf_key(k: str) -> str:
    backbone = hf_backbone_key(k)
    if backbone is not None:
        return backbone
    for old, new in _HF_TOP_RULES:
        if k.startswith(old):
            return new + k.removeprefix(old)
    m = re.match(r"^model\.(encoder|decoder)\.layers\.(\d+)\.(.*)$", k)
    if m:
        return f"transformer.{m[1]}.layers.{m[2]}.{_hf_layer_key(m[3], m[1])}"
    return k


def convert_detr_state_dict(state_dict: dict[str, torch.Tensor], fmt: str | None = None) -> dict[str, torch.Tensor]:
    """Detect the format (unless given) and convert; a dict already in vistra's names is returned unchanged."""
    fmt = fmt or detect_detr_format(state_dict)
    if fmt == "detr_official":
        return convert_detr_official(state_dict)
    if fmt == "detr_hf":
        return convert_detr_hf(state_dict)
    if fmt is None:
        return dict(state_dict)
    raise ValueError(f"unknown DETR checkpoint format {fmt!r}; expected 'detr_official' or 'detr_hf'")
