"""Official TransCenter V2 and TransCenter-Lite checkpoints -> vistra's TransCenter names, for the modules that
both designs share.

The official code (TransCenter_official: tracking/deformable_detr.py and deformable_detr_lite.py build the models
the released MOT17 / MOT20 files hold; models/deformable_transformer.py, deformable_transformer_lite.py,
PVT_v2.py and dla.py define their parts) shares vistra's PVTv2 encoder and input projections. Its one decoder
decodes queries from frame t-1 against frame t's memory, the role of vistra's track_decoder:

    official (the tensors under "model")                    vistra (tracking/transcenter.py)
    transformer.pvt_encoder.*                               backbone.model.*  (whai362 PVTv2 names on both sides)
    transformer.input_proj.l.{0,1}  (1x1 conv, GroupNorm)   input_proj.l.{0,1}
    transformer.decoder.layers.i.cross_attn.*               track_decoder.i.cross_attn.*
    transformer.decoder.layers.i.norm1                      track_decoder.i.norm1
    transformer.decoder.layers.i.pre_linear1 / pre_linear2  track_decoder.i.linear1 / linear2
    transformer.decoder.layers.i.pre_norm3                  track_decoder.i.norm2

Everything else has no counterpart and is listed in `dropped` (README, "Tracking", says why, module by module):
the decoder's self_attn and the norm2 after it (V2), the query FFN transformer.{linear1, linear2, norm2}, ida_up
(DCNv2 + BatchNorm upsampling to a 64-channel map), the heads on that map (hm, wh, reg, ct_offset; Lite:
ct_offset_reg_wh), tracking and ida_up_tracking (an MLP on features gathered at the previous centers), and in
Lite the decoder's sampling_offsets / attention_weights, which sample the stride-4 level only where vistra's
sample every level. vistra's level_embed, det_decoder, det_fuse, track_fuse and heads have no official
counterpart: a converted model loads with strict=False, which reports them as missing.
"""
from __future__ import annotations

import re

import torch

FORMAT = "transcenter_official"
_BACKBONE = "transformer.pvt_encoder."
_INPUT_PROJ = "transformer.input_proj."
_LAYER = re.compile(r"transformer\.decoder\.layers\.(\d+)\.(.+)")
_LAYER_MODULES = {"norm1": "norm1", "pre_linear1": "linear1", "pre_linear2": "linear2", "pre_norm3": "norm2"}
# Lite's decoder attends to one level (n_levels=1): these two are sized for it, value / output projections are not.
_PER_LEVEL = ("cross_attn.sampling_offsets.", "cross_attn.attention_weights.")


def detect_transcenter_format(state_dict: dict[str, torch.Tensor]) -> str | None:
    """"transcenter_official" for a TransCenter V2 / Lite model state dict (PVTv2 encoder inside the
    transformer), None otherwise."""
    keys = state_dict.keys()
    if _BACKBONE + "patch_embed1.proj.weight" in keys and any(k.startswith(_INPUT_PROJ) for k in keys):
        return FORMAT
    return None


def is_lite(state_dict: dict[str, torch.Tensor]) -> bool:
    """TransCenter-Lite: its decoder layers have no self-attention (and attend to one level)."""
    layers = [k for k in state_dict if _LAYER.fullmatch(k)]
    return bool(layers) and not any(".self_attn." in k for k in layers)


def convert_transcenter_official(state_dict: dict[str, torch.Tensor],
                                 dropped: list[str] | None = None) -> dict[str, torch.Tensor]:
    """Official state dict -> {vistra name: tensor} for the shared modules (table above); the official keys
    without a counterpart are appended to dropped, in file order. Never modifies its input."""
    lite = is_lite(state_dict)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = _vistra_key(key, lite)
        if new is not None:
            out[new] = value
        elif dropped is not None:
            dropped.append(key)
    return out


def _vistra_key(key: str, lite: bool) -> str | None:
    if key.startswith(_BACKBONE):
        return "backbone.model." + key.removeprefix(_BACKBONE)
    if key.startswith(_INPUT_PROJ):
        return key.removeprefix("transformer.")
    m = _LAYER.fullmatch(key)
    if m is None:
        return None
    layer, rest = m.groups()
    if rest.startswith("cross_attn."):
        return None if lite and rest.startswith(_PER_LEVEL) else f"track_decoder.{layer}.{rest}"
    module, _, param = rest.rpartition(".")
    return f"track_decoder.{layer}.{_LAYER_MODULES[module]}.{param}" if module in _LAYER_MODULES else None
