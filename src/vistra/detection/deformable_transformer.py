"""Deformable DETR's encoder-decoder transformer (Zhu et al., 2021) over multi-scale feature maps.

Parameter names are fundamentalvision/Deformable-DETR's (level_embed, encoder.layers.i.self_attn.*,
decoder.layers.i.{cross_attn, self_attn, norm1..3, linear1, linear2}, reference_points or, two-stage, enc_output,
enc_output_norm, pos_trans, pos_trans_norm), so official checkpoints load by a straight copy. As there, the decoder
layer norms are named by their slot: norm2 follows the self-attention, norm1 the cross-attention.

Iterative box refinement and two-stage use the detector's heads: DeformableDETR sets `decoder.bbox_embed`
(refinement) and `class_embed` / `bbox_embed` of this module (two-stage proposals); they are not registered here
twice.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from vistra.detection.transformer import MultiheadAttention
from vistra.layers.deform_attn import MSDeformAttn
from vistra.layers.dropout import Dropout


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """log(x / (1 - x)) with x clamped to [0, 1] and both terms to at least eps (the official helper)."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def ffn_residual(layer: nn.Module, x: torch.Tensor, drop_mid: nn.Module, drop_out: nn.Module) -> torch.Tensor:
    """x + the layer's feed-forward block (linear1 -> ReLU -> linear2, with its dropouts), before the norm."""
    return x + drop_out(layer.linear2(drop_mid(F.relu(layer.linear1(x)))))


class DeformableEncoderLayer(nn.Module):
    """x = norm1(x + MSDeformAttn(x + pos, ref, x)); x = norm2(x + FFN(x))."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int,
                 impl: str = "auto"):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference_points: torch.Tensor, shapes,
                padding_mask: torch.Tensor | None) -> torch.Tensor:
        """src, pos (B, S, D), reference_points (B, S, L, 2), padding_mask (B, S) -> (B, S, D)."""
        src = self.norm1(src + self.dropout1(self.self_attn(src + pos, reference_points, src, shapes, padding_mask)))
        return self.norm2(ffn_residual(self, src, self.dropout2, self.dropout3))


class DeformableDecoderLayer(nn.Module):
    """Self-attention among queries (norm2), deformable cross-attention to the memory (norm1), FFN (norm3)."""

    def __init__(self, d_model: int, d_ffn: int, dropout: float, n_levels: int, n_heads: int, n_points: int,
                 impl: str = "auto"):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl)
        self.dropout1 = Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, n_heads, dropout=dropout)
        self.dropout2 = Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor, reference_points: torch.Tensor,
                memory: torch.Tensor, shapes, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """tgt, query_pos (B, Q, D), reference_points (B, Q, L, 2 or 4), memory (B, S, D) -> (B, Q, D)."""
        qk = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout2(self.self_attn(qk, qk, tgt)))
        cross = self.cross_attn(tgt + query_pos, reference_points, memory, shapes, padding_mask)
        tgt = self.norm1(tgt + self.dropout1(cross))
        return self.norm3(ffn_residual(self, tgt, self.dropout3, self.dropout4))


def encoder_reference_points(shapes, valid_ratios: torch.Tensor) -> torch.Tensor:
    """Pixel centres of every level, normalised by each image's valid size, seen from every level.

    shapes [(H_l, W_l)], valid_ratios (B, L, 2) (w, h) -> (B, S, L, 2) (x, y)."""
    refs = []
    for lvl, (h, w) in enumerate(shapes):
        kw = {"dtype": valid_ratios.dtype, "device": valid_ratios.device}
        # arange + 0.5 rather than linspace(0.5, h - 0.5, h): the same values, and a symbolic h stays symbolic
        ref_y, ref_x = torch.meshgrid(torch.arange(h, **kw) + 0.5, torch.arange(w, **kw) + 0.5,
                                      indexing="ij")  # (h, w) each
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)  # (B, h*w)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)  # (B, h*w)
        refs.append(torch.stack((ref_x, ref_y), -1))  # (B, h*w, 2)
    return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]  # (B, S, L, 2)


def valid_ratio(mask: torch.Tensor) -> torch.Tensor:
    """Padding mask (B, H, W) True = padding -> (B, 2): the unpadded fraction of the width and the height."""
    _, H, W = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).float() / H
    valid_w = (~mask[:, 0, :]).sum(1).float() / W
    return torch.stack([valid_w, valid_h], -1)


def proposal_position(proposals: torch.Tensor, num_pos_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Sine encoding of unsigmoided boxes (B, K, 4) -> (B, K, 4 * num_pos_feats), as the two-stage queries' input."""
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)  # (F,)
    pos = proposals.sigmoid().float()[..., None] * (2 * math.pi) / dim_t  # (B, K, 4, F)
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=4).flatten(2)  # (B, K, 4F)
    return pos.to(proposals.dtype)


def encoder_proposals(memory: torch.Tensor, padding_mask: torch.Tensor, shapes
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """One box per memory pixel: centred on it, 0.05 * 2^level wide; unsigmoided, +inf where padded or too close
    to the border. memory (B, S, D), padding_mask (B, S) -> memory with those pixels zeroed, proposals (B, S, 4)."""
    B = memory.shape[0]
    proposals, start = [], 0
    for lvl, (h, w) in enumerate(shapes):
        m = padding_mask[:, start:start + h * w].view(B, h, w)
        valid_h, valid_w = (~m[:, :, 0]).sum(1), (~m[:, 0, :]).sum(1)  # (B,)
        kw = {"dtype": memory.dtype, "device": memory.device}
        gy, gx = torch.meshgrid(torch.arange(h, **kw), torch.arange(w, **kw), indexing="ij")  # (h, w) each
        grid = torch.stack([gx, gy], -1)  # (h, w, 2)
        scale = torch.stack([valid_w, valid_h], -1).view(B, 1, 1, 2)
        grid = (grid[None].expand(B, -1, -1, -1) + 0.5) / scale  # (B, h, w, 2)
        wh = torch.ones_like(grid) * 0.05 * (2.0 ** lvl)
        proposals.append(torch.cat((grid, wh), -1).view(B, -1, 4))  # (B, h*w, 4)
        start += h * w
    proposals = torch.cat(proposals, 1)  # (B, S, 4)
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)  # (B, S, 1)
    proposals = torch.log(proposals / (1 - proposals))
    proposals = proposals.masked_fill(padding_mask[..., None], float("inf")).masked_fill(~valid, float("inf"))
    memory = memory.masked_fill(padding_mask[..., None], 0.0).masked_fill(~valid, 0.0)
    return memory, proposals


class DeformableEncoder(nn.Module):
    """Encoder layers (official name layers.{i}) over the flattened levels; no final norm."""

    def __init__(self, layer: DeformableEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor, shapes, valid_ratios: torch.Tensor,
                padding_mask: torch.Tensor | None) -> torch.Tensor:
        """src, pos (B, S, D), valid_ratios (B, L, 2), padding_mask (B, S) -> memory (B, S, D)."""
        ref = encoder_reference_points(shapes, valid_ratios)  # (B, S, L, 2)
        for layer in self.layers:
            src = layer(src, pos, ref, shapes, padding_mask)
        return src


class DeformableDecoder(nn.Module):
    """Decoder layers (official name layers.{i}); no final norm. With `bbox_embed` set (refinement), every layer
    moves the reference points by its box head's prediction (gradient stopped between layers)."""

    def __init__(self, layer: DeformableDecoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.bbox_embed: list[nn.Module] | None = None  # set by the detector, not registered here

    def forward(self, tgt: torch.Tensor, reference_points: torch.Tensor, memory: torch.Tensor, shapes,
                valid_ratios: torch.Tensor, query_pos: torch.Tensor, padding_mask: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """tgt, query_pos (B, Q, D), reference_points (B, Q, 2 or 4) in [0, 1], memory (B, S, D), valid_ratios
        (B, L, 2) -> every layer's output (num_layers, B, Q, D) and its reference points (num_layers, B, Q, 2 or 4)."""
        outs, refs = [], []
        for lid, layer in enumerate(self.layers):
            ratios = valid_ratios if reference_points.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)
            ref_in = reference_points[:, :, None] * ratios[:, None]  # (B, Q, L, 2 or 4)
            tgt = layer(tgt, query_pos, ref_in, memory, shapes, padding_mask)
            if self.bbox_embed is not None:
                delta = self.bbox_embed[lid](tgt)  # (B, Q, 4)
                if reference_points.shape[-1] == 4:
                    new = (delta + inverse_sigmoid(reference_points)).sigmoid()
                else:
                    new = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1).sigmoid()
                reference_points = new.detach()
            outs.append(tgt)
            refs.append(reference_points)
        return torch.stack(outs), torch.stack(refs)


class DeformableTransformer(nn.Module):
    """Encoder over the flattened levels (with level embeddings), then the decoder over num_queries queries.

    One-stage: the queries (position + content, 2 x d_model each) are learned; their reference points are
    `reference_points(query_pos).sigmoid()`. Two-stage: every encoder pixel proposes a box, the top
    `two_stage_num_proposals` by class score become the decoder's reference boxes and (encoded) queries.
    """

    def __init__(self, d_model: int = 256, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 1024, dropout: float = 0.1, num_feature_levels: int = 4,
                 dec_n_points: int = 4, enc_n_points: int = 4, two_stage: bool = False,
                 two_stage_num_proposals: int = 300, impl: str = "auto"):
        super().__init__()
        self.d_model, self.nhead = d_model, nhead
        self.two_stage, self.two_stage_num_proposals = two_stage, two_stage_num_proposals
        L = num_feature_levels
        enc = DeformableEncoderLayer(d_model, dim_feedforward, dropout, L, nhead, enc_n_points, impl)
        self.encoder = DeformableEncoder(enc, num_encoder_layers)
        dec = DeformableDecoderLayer(d_model, dim_feedforward, dropout, L, nhead, dec_n_points, impl)
        self.decoder = DeformableDecoder(dec, num_decoder_layers)
        self.level_embed = nn.Parameter(torch.empty(L, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        else:
            self.reference_points = nn.Linear(d_model, 2)
        self.class_embed: list[nn.Module] | None = None  # two-stage proposal heads, set by the detector
        self.bbox_embed: list[nn.Module] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation: Xavier on matrices, MSDeformAttn's own, normal level embeddings."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if not self.two_stage:
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def set_impl(self, impl: str) -> None:
        """Switch every deformable attention to another implementation ("auto", "reference", "fast", "native")."""
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.impl = impl

    def flatten(self, srcs, masks, pos_embeds):
        """Per-level maps [(B, D, H_l, W_l)], masks [(B, H_l, W_l)], positions -> src (B, S, D), mask (B, S),
        position + level embedding (B, S, D), shapes [(H_l, W_l)], valid ratios (B, L, 2)."""
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)  # (B, S, D)
        mask = torch.cat([m.flatten(1) for m in masks], 1)  # (B, S)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1)
                         for lvl, p in enumerate(pos_embeds)], 1).to(src.dtype)  # (B, S, D)
        valid = torch.stack([valid_ratio(m) for m in masks], 1).to(src.dtype)  # (B, L, 2)
        return src, mask, pos, shapes, valid

    def forward(self, srcs, masks, pos_embeds, query_embed: torch.Tensor | None = None):
        """srcs [(B, D, H_l, W_l)], masks [(B, H_l, W_l)] True = padding, pos_embeds [(B, D, H_l, W_l)],
        query_embed (Q, 2D) (one-stage) ->
        hs (num_dec_layers, B, Q, D), initial reference (B, Q, 2 or 4), per-layer references (num_dec_layers, B, Q,
        2 or 4), and two-stage only: proposal logits (B, S, C) and unsigmoided proposal boxes (B, S, 4)."""
        src, mask, pos, shapes, valid = self.flatten(srcs, masks, pos_embeds)
        memory = self.encoder(src, pos, shapes, valid, mask)  # (B, S, D)
        B, _, D = memory.shape
        enc_class = enc_coord = None
        if self.two_stage:
            out_memory, proposals = encoder_proposals(memory, mask, shapes)
            out_memory = self.enc_output_norm(self.enc_output(out_memory))  # (B, S, D)
            if memory.shape[1] < self.two_stage_num_proposals:
                raise ValueError(f"two-stage: the feature maps have {memory.shape[1]} pixels, fewer than the "
                                 f"{self.two_stage_num_proposals} proposals to keep; use larger images or fewer queries")
            last = self.decoder.num_layers
            enc_class = self.class_embed[last](out_memory)  # (B, S, C)
            enc_coord = self.bbox_embed[last](out_memory) + proposals  # (B, S, 4) unsigmoided
            topk = torch.topk(enc_class[..., 0], self.two_stage_num_proposals, dim=1)[1]  # (B, K)
            top_coords = torch.gather(enc_coord, 1, topk[..., None].expand(-1, -1, 4)).detach()  # (B, K, 4)
            reference_points = top_coords.sigmoid()
            query = self.pos_trans_norm(self.pos_trans(proposal_position(top_coords, D // 2)))  # (B, K, 2D)
            query_pos, tgt = torch.split(query, D, dim=2)  # (B, K, D) each
        else:
            query_pos, tgt = torch.split(query_embed, D, dim=1)  # (Q, D) each
            query_pos = query_pos[None].expand(B, -1, -1)  # (B, Q, D)
            tgt = tgt[None].expand(B, -1, -1)  # (B, Q, D)
            reference_points = self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        hs, refs = self.decoder(tgt, reference_points, memory, shapes, valid, query_pos, mask)
        return hs, reference_points, refs, enc_class, enc_coord
