"""DETR's encoder-decoder transformer (Carion et al., 2020): post-norm layers, position added to queries and keys.

Parameter names are facebookresearch/detr's (nn.MultiheadAttention's in_proj_weight / in_proj_bias / out_proj,
linear1, linear2, norm1..norm3, decoder.norm), so official checkpoints load by a straight copy. Attention runs on
F.scaled_dot_product_attention with the sequence batch-first, (B, L, D), instead of the official (L, B, D).

Masks follow the official convention: key_padding_mask (B, L) bool, True = padding (ignored as a key).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vistra.layers.dropout import Dropout, attention


class MultiheadAttention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameters (in_proj_weight (3D, D), in_proj_bias (3D,),
    out_proj), batch-first, on the fused scaled-dot-product kernel (layers.dropout.attention when it drops out)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (B, Lq, D), key / value (B, Lk, D), key_padding_mask (B, Lk) True = padding -> (B, Lq, D).

        When query and key are the same tensor (self-attention), their projections run as one matmul.
        """
        B, Lq, D = query.shape
        Lk = key.shape[1]
        h, d = self.num_heads, D // self.num_heads
        w, b = self.in_proj_weight, self.in_proj_bias
        if query is key:
            q, k = F.linear(query, w[: 2 * D], b[: 2 * D]).split(D, dim=-1)  # each (B, Lq, D)
        else:
            q = F.linear(query, w[:D], b[:D])  # (B, Lq, D)
            k = F.linear(key, w[D: 2 * D], b[D: 2 * D])  # (B, Lk, D)
        v = F.linear(value, w[2 * D:], b[2 * D:])  # (B, Lk, D)
        q = q.reshape(B, Lq, h, d).transpose(1, 2)  # (B, h, Lq, d)
        k = k.reshape(B, Lk, h, d).transpose(1, 2)  # (B, h, Lk, d)
        v = v.reshape(B, Lk, h, d).transpose(1, 2)  # (B, h, Lk, d)
        attn_mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Lk)
        out = attention(q, k, v, attn_mask, self.dropout if self.training else 0.0)  # (B, h, Lq, d)
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, D))


def _with_pos(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    return x if pos is None else x + pos


class EncoderLayer(nn.Module):
    """x = norm1(x + SA(q=k=x+pos, v=x)); x = norm2(x + FFN(x)) (post-norm; pre_norm moves the norms first)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, pre_norm: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, src: torch.Tensor, key_padding_mask: torch.Tensor | None,
                pos: torch.Tensor | None) -> torch.Tensor:
        """src, pos (B, L, D); key_padding_mask (B, L) -> (B, L, D)."""
        if self.pre_norm:
            x = self.norm1(src)
            qk = _with_pos(x, pos)
            src = src + self.dropout1(self.self_attn(qk, qk, x, key_padding_mask))
            return src + self.dropout2(self._ffn(self.norm2(src)))
        qk = _with_pos(src, pos)
        src = self.norm1(src + self.dropout1(self.self_attn(qk, qk, src, key_padding_mask)))
        return self.norm2(src + self.dropout2(self._ffn(src)))


class DecoderLayer(nn.Module):
    """Self-attention among the queries, cross-attention to the memory, FFN; each followed by add & norm.

    Self-attention: q = k = tgt + query_pos, v = tgt. Cross-attention: q = tgt + query_pos, k = memory + pos,
    v = memory.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float, pre_norm: bool = False):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.pre_norm = pre_norm

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.dropout(F.relu(self.linear1(x))))

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_key: torch.Tensor,
                memory_key_padding_mask: torch.Tensor | None, query_pos: torch.Tensor) -> torch.Tensor:
        """tgt, query_pos (B, Q, D); memory (B, L, D); memory_key = memory + pos (B, L, D); mask (B, L) -> (B, Q, D)."""
        if self.pre_norm:
            x = self.norm1(tgt)
            qk = x + query_pos
            tgt = tgt + self.dropout1(self.self_attn(qk, qk, x))
            x = self.norm2(tgt)
            tgt = tgt + self.dropout2(self.multihead_attn(x + query_pos, memory_key, memory, memory_key_padding_mask))
            return tgt + self.dropout3(self._ffn(self.norm3(tgt)))
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(qk, qk, tgt)))
        cross = self.multihead_attn(tgt + query_pos, memory_key, memory, memory_key_padding_mask)
        tgt = self.norm2(tgt + self.dropout2(cross))
        return self.norm3(tgt + self.dropout3(self._ffn(tgt)))


class TransformerEncoder(nn.Module):
    """A stack of encoder layers (official names layers.{i}; norm only with pre_norm)."""

    def __init__(self, layer: EncoderLayer, num_layers: int, norm: nn.Module | None = None):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, src: torch.Tensor, key_padding_mask: torch.Tensor | None,
                pos: torch.Tensor | None) -> torch.Tensor:
        """src, pos (B, L, D), key_padding_mask (B, L) -> memory (B, L, D)."""
        for layer in self.layers:
            src = layer(src, key_padding_mask, pos)
        return src if self.norm is None else self.norm(src)


class TransformerDecoder(nn.Module):
    """A stack of decoder layers and the shared final LayerNorm (official names layers.{i}, norm).

    Returns every layer's output passed through `norm` (official return_intermediate=True); the un-normed
    output is what the next layer receives.
    """

    def __init__(self, layer: DecoderLayer, num_layers: int, norm: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = norm

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, memory_key_padding_mask: torch.Tensor | None,
                pos: torch.Tensor | None, query_pos: torch.Tensor) -> torch.Tensor:
        """tgt, query_pos (B, Q, D); memory, pos (B, L, D) -> intermediate outputs (num_layers, B, Q, D)."""
        memory_key = _with_pos(memory, pos)  # the cross-attention keys' input, the same for every layer
        outs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, memory_key, memory_key_padding_mask, query_pos)
            outs.append(self.norm(tgt))
        return torch.stack(outs)


class Transformer(nn.Module):
    """DETR's transformer: encoder over the flattened feature map, decoder over num_queries learned queries.

    Defaults are the paper's: d_model 256, 8 heads, 6 + 6 layers, FFN 2048, dropout 0.1, post-norm.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, pre_norm: bool = False):
        super().__init__()
        self.d_model = d_model
        self.nhead = nhead
        enc = EncoderLayer(d_model, nhead, dim_feedforward, dropout, pre_norm)
        self.encoder = TransformerEncoder(enc, num_encoder_layers, nn.LayerNorm(d_model) if pre_norm else None)
        dec = DecoderLayer(d_model, nhead, dim_feedforward, dropout, pre_norm)
        self.decoder = TransformerDecoder(dec, num_decoder_layers, nn.LayerNorm(d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform on every matrix, as the official code."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, mask: torch.Tensor | None, query_embed: torch.Tensor,
                pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """src (B, D, H, W) projected features, mask (B, H, W) True = padding (or None: no padding),
        query_embed (Q, D), pos (B, D, H, W) -> decoder outputs (num_dec_layers, B, Q, D), memory (B, D, H, W).

        The decoder target starts at zeros; query_embed is its position (added to queries in every layer).
        """
        B, D, H, W = src.shape
        src = src.flatten(2).transpose(1, 2)  # (B, HW, D)
        pos = pos.flatten(2).transpose(1, 2).to(src.dtype)  # (B, HW, D)
        key_padding_mask = None if mask is None else mask.flatten(1)  # (B, HW)
        query_pos = query_embed[None].expand(B, -1, -1)  # (B, Q, D)
        memory = self.encoder(src, key_padding_mask, pos)  # (B, HW, D)
        tgt = torch.zeros_like(query_pos)  # (B, Q, D)
        hs = self.decoder(tgt, memory, key_padding_mask, pos, query_pos)  # (L, B, Q, D)
        return hs, memory.transpose(1, 2).reshape(B, D, H, W)
