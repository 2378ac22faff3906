"""ViT checkpoints as key maps onto vistra's names (which are timm's, so timm files need no renaming).

    Hugging Face ViT (saved files; transformers 5 in-memory names)          vistra / timm
    [vit.]embeddings.cls_token                                              cls_token
    [vit.]embeddings.position_embeddings                                    pos_embed
    [vit.]embeddings.patch_embeddings.projection                            patch_embed.proj
    [vit.]encoder.layer.i.layernorm_before / layernorm_after                blocks.i.norm1 / norm2
      (5.x in memory: [vit.]layers.i.)
    ....attention.attention.{query,key,value} (5.x: attention.{q,k,v}_proj)  blocks.i.attn.qkv (q, k, v stacked)
    ....attention.output.dense (5.x: attention.o_proj)                      blocks.i.attn.proj
    ....intermediate.dense / output.dense (5.x: mlp.fc1 / mlp.fc2)          blocks.i.mlp.fc1 / fc2
    [vit.]layernorm                                                         norm
    classifier                                                              head
    [vit.]pooler.dense, [vit.]embeddings.mask_token                         dropped: no counterpart in ViT

Hugging Face keeps q, k and v apart; timm's qkv Linear is (3D, D) with rows [q; k; v], each head-major, which is exactly
the row-wise concatenation of HF's query, key and value. Hub ViT configs say layer_norm_eps=1e-12 where the
original (and vistra) use 1e-6: logits of converted Hub weights can differ from transformers' by ~1e-5.

A rule is (pattern, target, part): pattern is matched in full against a key; target is a re template, a
function of the match, or None (drop the key); part is None or (index, count) for tensors concatenated along
dim 0 into one target. checkpoints/convert.py applies the rules.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

_P = r"(?:vit\.)?"
_L = _P + r"(?:encoder\.layer|layers)\.(\d+)\."

HF_VIT_RULES = [
    (_P + r"embeddings\.cls_token", "cls_token", None),
    (_P + r"embeddings\.position_embeddings", "pos_embed", None),
    (_P + r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1", None),
    (_P + r"embeddings\.mask_token", None, None),
    (_L + r"layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2", None),
    (_L + r"layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2", None),
    (_L + r"attention\.(?:attention\.query|q_proj)\.(weight|bias)", r"blocks.\1.attn.qkv.\2", (0, 3)),
    (_L + r"attention\.(?:attention\.key|k_proj)\.(weight|bias)", r"blocks.\1.attn.qkv.\2", (1, 3)),
    (_L + r"attention\.(?:attention\.value|v_proj)\.(weight|bias)", r"blocks.\1.attn.qkv.\2", (2, 3)),
    (_L + r"attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"blocks.\1.attn.proj.\2", None),
    (_L + r"(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2", None),
    (_L + r"(?:output\.dense|mlp\.fc2)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2", None),
    (_P + r"layernorm\.(weight|bias)", r"norm.\1", None),
    (_P + r"pooler\.dense\.(weight|bias)", None, None),
    (r"classifier\.(weight|bias)", r"head.\1", None),
]

# timm modules that are part of the classifier: fc_norm exists when timm pools by average (global_pool="avg").
VIT_HEAD_PREFIXES = ("head.", "fc_norm.")


def is_hf_vit(keys: Iterable[str]) -> bool:
    """Keys of transformers' ViTModel / ViTForImageClassification."""
    return any(re.fullmatch(_P + r"embeddings\.patch_embeddings\.projection\.weight", k) for k in keys)


def is_timm_vit(keys: Iterable[str]) -> bool:
    """Keys of a timm VisionTransformer (= vistra's ViT)."""
    keys = set(keys)
    return any(re.fullmatch(r"blocks\.\d+\.attn\.qkv\.weight", k) for k in keys) and (
        "pos_embed" in keys or "patch_embed.proj.weight" in keys)
