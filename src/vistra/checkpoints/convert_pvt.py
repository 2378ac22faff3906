"""PVT v1 and PVTv2 checkpoints as key maps onto vistra's names (the official whai362/PVT ones).

Official files need no renaming. timm's PVTv2 and Hugging Face's Pvt / PvtV2 rename (s = stage, 0-based in the
foreign names, 1-based in the official ones; j = block):

    timm pvt_v2                          HF PvtV2 ([pvt_v2.]encoder.layers.s.)   official / vistra
    patch_embed.{proj,norm}  (s = 0)     patch_embedding.{proj,layer_norm}       patch_embed{s+1}.{proj,norm}
    stages.s.downsample.{proj,norm}
    stages.s.blocks.j.norm1 / norm2      blocks.j.layer_norm_1 / layer_norm_2    block{s+1}.j.norm1 / norm2
    ....attn.q / kv                      ....attention.query / key + value       ....attn.q / kv (k, v stacked)
    ....attn.sr / norm / proj            ....attention.spatial_reduction /       ....attn.sr / norm / proj
                                             layer_norm / proj
    ....mlp.fc1 / dwconv / fc2           ....mlp.dense1 / dwconv.dwconv / dense2  ....mlp.fc1 / dwconv.dwconv / fc2
    stages.s.norm                        layer_norm                              norm{s+1}
    head                                 classifier                              head

    HF Pvt (v1, [pvt.]encoder.)                           official / vistra
    patch_embeddings.s.position_embeddings                pos_embed{s+1}  (stage 4: class token entry first)
    patch_embeddings.3.cls_token                          cls_token
    patch_embeddings.s.{projection,layer_norm}            patch_embed{s+1}.{proj,norm}
    block.s.j.layer_norm_1 / layer_norm_2                 block{s+1}.j.norm1 / norm2
    block.s.j.attention.self.query / key + value          block{s+1}.j.attn.q / kv
    block.s.j.attention.self.sequence_reduction / layer_norm   ....attn.sr / norm
    block.s.j.attention.output.dense                      ....attn.proj
    block.s.j.mlp.dense1 / dense2                         ....mlp.fc1 / fc2
    layer_norm / classifier                               norm / head

Hugging Face builds every LayerNorm with layer_norm_eps (1e-6), where the official code (and vistra) uses 1e-5 in
the patch embeddings and in the spatial-reduction norm: converted HF weights give logits within ~1e-5 of
transformers', not bit-equal. Rules have the form described in convert_vit.py.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable


def _stage(module: str) -> Callable[[re.Match], str]:
    """Target for (stage, param) matches: module may hold {s} (1-based stage)."""
    return lambda m: f"{module.format(s=int(m[1]) + 1)}.{m[2]}"


def _block(module: str) -> Callable[[re.Match], str]:
    """Target for (stage, block, param) matches: block{s+1}.{j}.{module}.{param}."""
    return lambda m: f"block{int(m[1]) + 1}.{m[2]}.{module}.{m[3]}"


_W = r"(weight|bias)"
_TS = r"stages\.(\d+)\.blocks\.(\d+)\."

TIMM_PVT_V2_RULES = [
    (r"patch_embed\.(proj|norm)\.(weight|bias)", r"patch_embed1.\1.\2", None),
    (r"stages\.(\d+)\.downsample\.(proj\.weight|proj\.bias|norm\.weight|norm\.bias)", _stage("patch_embed{s}"), None),
    (_TS + r"mlp\.dwconv\." + _W, _block("mlp.dwconv.dwconv"), None),
    (_TS + r"(.+)", lambda m: f"block{int(m[1]) + 1}.{m[2]}.{m[3]}", None),
    (r"stages\.(\d+)\.norm\." + _W, _stage("norm{s}"), None),
]

_H2 = r"(?:pvt_v2\.)?encoder\.layers\.(\d+)\."
_H2B = _H2 + r"blocks\.(\d+)\."

HF_PVT_V2_RULES = [
    (_H2 + r"patch_embedding\.proj\." + _W, _stage("patch_embed{s}.proj"), None),
    (_H2 + r"patch_embedding\.layer_norm\." + _W, _stage("patch_embed{s}.norm"), None),
    (_H2B + r"layer_norm_1\." + _W, _block("norm1"), None),
    (_H2B + r"layer_norm_2\." + _W, _block("norm2"), None),
    (_H2B + r"attention\.query\." + _W, _block("attn.q"), None),
    (_H2B + r"attention\.key\." + _W, _block("attn.kv"), (0, 2)),
    (_H2B + r"attention\.value\." + _W, _block("attn.kv"), (1, 2)),
    (_H2B + r"attention\.proj\." + _W, _block("attn.proj"), None),
    (_H2B + r"attention\.spatial_reduction\." + _W, _block("attn.sr"), None),
    (_H2B + r"attention\.layer_norm\." + _W, _block("attn.norm"), None),
    (_H2B + r"mlp\.dense1\." + _W, _block("mlp.fc1"), None),
    (_H2B + r"mlp\.dwconv\.dwconv\." + _W, _block("mlp.dwconv.dwconv"), None),
    (_H2B + r"mlp\.dense2\." + _W, _block("mlp.fc2"), None),
    (_H2 + r"layer_norm\." + _W, _stage("norm{s}"), None),
    (r"classifier\." + _W, r"head.\1", None),
]

_H1 = r"(?:pvt\.)?encoder\."
_H1P = _H1 + r"patch_embeddings\.(\d+)\."
_H1B = _H1 + r"block\.(\d+)\.(\d+)\."

HF_PVT_RULES = [
    (_H1P + r"position_embeddings", lambda m: f"pos_embed{int(m[1]) + 1}", None),
    (_H1P + r"cls_token", "cls_token", None),
    (_H1P + r"projection\." + _W, _stage("patch_embed{s}.proj"), None),
    (_H1P + r"layer_norm\." + _W, _stage("patch_embed{s}.norm"), None),
    (_H1B + r"layer_norm_1\." + _W, _block("norm1"), None),
    (_H1B + r"layer_norm_2\." + _W, _block("norm2"), None),
    (_H1B + r"attention\.self\.query\." + _W, _block("attn.q"), None),
    (_H1B + r"attention\.self\.key\." + _W, _block("attn.kv"), (0, 2)),
    (_H1B + r"attention\.self\.value\." + _W, _block("attn.kv"), (1, 2)),
    (_H1B + r"attention\.self\.sequence_reduction\." + _W, _block("attn.sr"), None),
    (_H1B + r"attention\.self\.layer_norm\." + _W, _block("attn.norm"), None),
    (_H1B + r"attention\.output\.dense\." + _W, _block("attn.proj"), None),
    (_H1B + r"mlp\.dense1\." + _W, _block("mlp.fc1"), None),
    (_H1B + r"mlp\.dense2\." + _W, _block("mlp.fc2"), None),
    (_H1 + r"layer_norm\." + _W, r"norm.\1", None),
    (r"classifier\." + _W, r"head.\1", None),
]


def _any(pattern: str, keys: Iterable[str]) -> bool:
    return any(re.fullmatch(pattern, k) for k in keys)


def is_timm_pvt_v2(keys: Iterable[str]) -> bool:
    keys = list(keys)
    return "patch_embed.proj.weight" in keys and _any(r"stages\.\d+\.blocks\.\d+\.attn\.q\.weight", keys)


def is_hf_pvt_v2(keys: Iterable[str]) -> bool:
    return _any(_H2 + r"patch_embedding\.proj\.weight", keys)


def is_hf_pvt(keys: Iterable[str]) -> bool:
    return _any(_H1P + r"projection\.weight", keys)


def is_official_pvt_v2(keys: Iterable[str]) -> bool:
    """whai362 PVTv2 (= vistra): patch_embed1, block1.0.mlp.dwconv.dwconv, no position embedding."""
    keys = set(keys)
    return "patch_embed1.proj.weight" in keys and "pos_embed1" not in keys and _any(
        r"block\d\.\d+\.mlp\.dwconv\.dwconv\.weight", keys)


def is_official_pvt(keys: Iterable[str]) -> bool:
    """whai362 PVT v1 (= vistra): patch_embed1 and a position embedding per stage."""
    keys = set(keys)
    return "patch_embed1.proj.weight" in keys and "pos_embed1" in keys
