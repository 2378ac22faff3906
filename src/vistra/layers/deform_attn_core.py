"""Multi-scale deformable attention, functional core: a reference path and a fast pure-PyTorch path.

Both compute exactly what the official ``ms_deform_attn_core_pytorch`` computes: for every query q, head m,
level l and point p, bilinearly sample level l's value map (zeros outside, ``align_corners=False``, i.e. pixel
coordinate = location * size - 0.5) and sum the samples weighted by the attention weights.

The fast path needs no compiled extension. It works on a zero-padded copy of the value maps, so that every
corner it reads is in bounds and corners outside the map read zeros: level map (H, W) becomes (H + 3, W + 3),
one zero row/column before and two after, and pixel coordinates are clamped to [-1, W] (padded: [0, W + 1]),
which changes nothing because beyond that all four corners are outside the map anyway. Then

- forward: the 4 corner rows of the L*P samples of one (query, head) form one "bag" of 4*L*P rows of the
  padded table (B * S_pad * M, D); ``F.embedding_bag`` with per-sample weights (bilinear weight x attention
  weight) gathers and reduces every bag in one fused kernel, with no (B*M, D, Lq, L*P) intermediate (the
  reference materialises several);
- backward (hand-written, only the inputs are saved): corner rows and weights are recomputed;
  d out / d corner weight = <grad_out, corner row> by a sampled dense-dense matmul, from which the gradients of
  attention weights and locations follow analytically; grad_value is the transposed gather, done without a
  scatter: the samples are sorted once by their top-left corner row (radix sort of integer keys) and
  ``F.embedding_bag`` runs over grad_out with one set of per-sample weights per corner -- the other three
  corners are the same rows shifted by one column (M table rows) and/or one row (W_pad * M table rows).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

Shapes = tuple[tuple[int, int], ...]

# Sampling entries (4 corners x L x P per query and head) processed at once; bigger chunks mean fewer kernel
# launches and OpenMP regions (which cost most on a shared CPU), smaller ones less temporary memory.
CPU_CHUNK_ENTRIES = 1 << 25
GPU_CHUNK_ENTRIES = 1 << 27


def as_shape_list(spatial_shapes) -> Shapes:
    """(H_l, W_l) per level as Python ints, from a list/tuple of pairs or an (L, 2) integer tensor.

    A tensor is read with ``.tolist()`` (a host sync, and data-dependent under torch.export: pass Python ints there).
    Symbolic sizes (torch.export, torch.compile with dynamic shapes) are kept symbolic: int() would fix them to the
    example's values.
    """
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    shapes = tuple((_size(h), _size(w)) for h, w in spatial_shapes)
    if any(h < 1 or w < 1 for h, w in shapes):
        raise ValueError(f"spatial_shapes must be positive (H, W) pairs, got {shapes}")
    return shapes


def _size(n) -> int:
    return n if isinstance(n, torch.SymInt) else int(n)


def ms_deform_attn_reference(
    value: torch.Tensor, shapes: Shapes, sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> torch.Tensor:
    """The official ``ms_deform_attn_core_pytorch``: one ``F.grid_sample`` per level, autograd backward.

    value (B, S, M, D), sampling_locations (B, Lq, M, L, P, 2) in [0, 1] (x, y), attention_weights
    (B, Lq, M, L, P) -> (B, Lq, M*D).
    """
    B, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in shapes], dim=1)  # L x (B, H*W, M, D)
    grids = 2 * sampling_locations - 1  # (B, Lq, M, L, P, 2) in [-1, 1]
    samples = []
    for lvl, (h, w) in enumerate(shapes):
        value_l = value_list[lvl].flatten(2).transpose(1, 2).reshape(B * M, D, h, w)  # (B*M, D, H, W)
        grid_l = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (B*M, Lq, P, 2)
        samples.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(B * M, 1, Lq, L * P)  # (B*M, 1, Lq, L*P)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)  # (B*M, D, Lq)
    return out.view(B, M * D, Lq).transpose(1, 2).contiguous()  # (B, Lq, M*D)


class _Geometry:
    """The padded table of one call: sizes, row strides, offsets, and the corner arithmetic.

    Table row of padded pixel (x, y) = pixel + 1 of level l, head m, batch element b:
    ((b * S_pad + level start + y * W_pad + x) * M + m).
    """

    def __init__(self, shapes: Shapes, B: int, M: int, P: int, dtype: torch.dtype, device: torch.device):
        L = len(shapes)
        self.shapes, self.B, self.M, self.L, self.P = shapes, B, M, L, P
        self.pad_w = [w + 3 for _, w in shapes]
        self.pad_sizes = [(h + 3) * (w + 3) for h, w in shapes]
        self.pad_starts = [sum(self.pad_sizes[:lvl]) for lvl in range(L)]
        self.rows = sum(self.pad_sizes) * M  # table rows per batch element
        total = self.rows * B
        # index arithmetic runs in floating point: exact while below 2**24 in float32
        self.idx_float = dtype if (dtype == torch.float64 or total < 2**24) else torch.float64
        self.idx_dtype = torch.int32 if total < 2**31 else torch.int64
        kw = {"dtype": dtype, "device": device}
        wh = torch.tensor([[w, h] for h, w in shapes], **kw)  # (L, 2)
        self.size = wh[:, None, :].expand(L, P, 2).contiguous()  # (L, P, 2) unpadded (W, H)
        self.hi = self.size + 1  # (L, P, 2) largest padded coordinate
        self.lo = torch.zeros((), **kw)
        self.half = torch.full((), 0.5, **kw)
        fkw = {"dtype": self.idx_float, "device": device}
        self.row_stride = torch.tensor([wp * M for wp in self.pad_w], **fkw)[:, None].expand(L, P).contiguous()  # (L, P)
        starts = torch.tensor([s * M for s in self.pad_starts], **fkw)  # (L,)
        heads = torch.arange(M, **fkw)  # (M,)
        batch = torch.arange(B, **fkw) * self.rows  # (B,)
        offset = batch[:, None, None, None] + heads[:, None, None] + starts[:, None]  # (B, M, L, 1)
        self.offset = offset.expand(B, M, L, P)[:, None].contiguous()  # (B, 1, M, L, P)
        corner = [[0, M, wp * M, wp * M + M] for wp in self.pad_w]  # (L, 4): (y0,x0) (y0,x1) (y1,x0) (y1,x1)
        corner = torch.tensor(corner, dtype=self.idx_dtype, device=device)
        self.corner_off = corner.t()[:, :, None].expand(4, L, P).contiguous()  # (4, L, P)

    def chunks(self, Lq: int, device: torch.device) -> list[tuple[int, int, int, int]]:
        """(b0, b1, q0, q1) blocks of work: whole batch elements at a time, or query ranges of one of them."""
        budget = GPU_CHUNK_ENTRIES if device.type == "cuda" else CPU_CHUNK_ENTRIES
        per_query = 4 * self.M * self.L * self.P
        per_batch = max(1, Lq * per_query)
        if per_batch <= budget:
            k = budget // per_batch
            return [(b, min(b + k, self.B), 0, Lq) for b in range(0, self.B, k)]
        nq = max(1, budget // per_query)
        return [(b, b + 1, q, min(q + nq, Lq)) for b in range(self.B) for q in range(0, Lq, nq)]

    def pad(self, value: torch.Tensor) -> torch.Tensor:
        """value (B, S, M, D) -> zero-padded table (B * S_pad * M, D)."""
        B, S, M, D = value.shape
        table = value.new_zeros(B, self.rows // M, M * D)  # (B, S_pad, M*D)
        src = value.reshape(B, S, M * D).split([h * w for h, w in self.shapes], dim=1)  # L x (B, H*W, M*D)
        for (h, w), start, v in zip(self.shapes, self.pad_starts, src):
            level = table[:, start : start + (h + 3) * (w + 3)].view(B, h + 3, w + 3, M * D)
            level[:, 1 : h + 1, 1 : w + 1] = v.view(B, h, w, M * D)
        return table.view(B * self.rows, D)  # (B*S_pad*M, D)

    def unpad(self, table: torch.Tensor, out: torch.Tensor) -> None:
        """table (B * S_pad * M, D) -> out (B, S, M, D): the interior of every padded level."""
        B, S, M, D = out.shape
        table = table.view(B, self.rows // M, M * D)  # (B, S_pad, M*D)
        dst = out.view(B, S, M * D).split([h * w for h, w in self.shapes], dim=1)  # L x (B, H*W, M*D)
        for (h, w), start, o in zip(self.shapes, self.pad_starts, dst):
            level = table[:, start : start + (h + 3) * (w + 3)].view(B, h + 3, w + 3, M * D)
            o.view(B, h, w, M * D).copy_(level[:, 1 : h + 1, 1 : w + 1])

    def corners(self, loc: torch.Tensor, b0: int, b1: int, base_out: torch.Tensor | None = None):
        """Top-left corner rows and bilinear fractions of a chunk.

        loc (k, nq, M, L, P, 2) of batch elements b0:b1 -> base (k, nq, M, L, P) table row of corner (y0, x0)
        (written into base_out when given), frac (k, nq, M, L, P, 2) in [0, 1), and pc, px (same shape):
        the clamped and unclamped padded coordinates (equal where the location gradient is not zero).
        Non-finite locations sample nothing, as in the official CUDA kernel.
        """
        px = torch.addcmul(self.half, loc, self.size)  # (k, nq, M, L, P, 2) padded pixel coordinate
        pc = torch.fmin(torch.fmax(px, self.lo), self.hi)  # (k, nq, M, L, P, 2), NaN -> 0
        p0 = pc.floor()
        frac = pc - p0  # (k, nq, M, L, P, 2)
        p0 = p0.to(self.idx_float)
        base = torch.addcmul(self.offset[b0:b1], p0[..., 1], self.row_stride)  # (k, nq, M, L, P)
        base = base.add_(p0[..., 0], alpha=self.M)
        if base_out is None:
            return base.to(self.idx_dtype), frac, pc, px
        return base_out.copy_(base), frac, pc, px

    @staticmethod
    def weights(frac: torch.Tensor, attn: torch.Tensor, out: list[torch.Tensor]) -> None:
        """Corner weights: frac (..., L, P, 2), attn (..., L, P) -> out, 4 tensors (..., L, P), corners in
        the order (y0, x0), (y0, x1), (y1, x0), (y1, x1)."""
        fx, fy = frac[..., 0], frac[..., 1]  # (..., L, P)
        wy1 = attn * fy
        wy0 = attn - wy1
        torch.mul(wy0, fx, out=out[1])
        torch.sub(wy0, out[1], out=out[0])
        torch.mul(wy1, fx, out=out[3])
        torch.sub(wy1, out[3], out=out[2])


def _fast_forward(value: torch.Tensor, loc: torch.Tensor, attn: torch.Tensor, geo: _Geometry) -> torch.Tensor:
    B, S, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    table = geo.pad(value)  # (B*S_pad*M, D)
    out = value.new_empty(B, Lq, M, D)
    for b0, b1, q0, q1 in geo.chunks(Lq, value.device):
        base, frac, _, _ = geo.corners(loc[b0:b1, q0:q1], b0, b1)  # (k, nq, M, L, P)
        n = base[..., 0, 0].numel()  # bags (query, head) in the chunk
        idx = base[..., None, :, :] + geo.corner_off  # (k, nq, M, 4, L, P)
        w = attn.new_empty(idx.shape)  # (k, nq, M, 4, L, P)
        geo.weights(frac, attn[b0:b1, q0:q1], w.unbind(-3))
        res = F.embedding_bag(idx.view(n, -1), table, per_sample_weights=w.view(n, -1), mode="sum")  # (n, D)
        out[b0:b1, q0:q1] = res.view(b1 - b0, q1 - q0, M, D)
    return out.view(B, Lq, M * D)


def _corner_dots(idx: torch.Tensor, g: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """<g[n], table[idx[n, j]]> for every entry: idx (n, J) int, g (n, D), table (R, D) -> (n, J).

    A sampled dense-dense matmul over the sparsity pattern of idx; no (n, J, D) gather is materialised.
    """
    n, J = idx.shape
    crow = torch.arange(0, n * J + 1, J, dtype=idx.dtype, device=idx.device)  # (n+1,)
    zeros = g.new_zeros(()).expand(n * J)  # the pattern's values (scaled by beta = 0): no allocation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        pattern = torch.sparse_csr_tensor(crow, idx.reshape(-1), zeros, size=(n, table.shape[0]), check_invariants=False)
        dots = torch.sparse.sampled_addmm(pattern, g, table.t(), beta=0.0)
    return dots.values().view(n, J)


def _fast_backward(value, loc, attn, geo: _Geometry, grad_out: torch.Tensor, needs: tuple[bool, bool, bool]):
    B, S, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    need_value, need_loc, need_attn = needs
    grad_out = grad_out.contiguous().view(B, Lq, M, D)
    grad_loc = torch.empty_like(loc) if need_loc else None
    grad_attn = torch.empty_like(attn) if need_attn else None
    table = geo.pad(value) if (need_loc or need_attn) else None  # (B*S_pad*M, D)
    keys = wts = None
    if need_value:  # every sample's top-left row and its 4 corner weights, for the transposed gather
        keys = torch.empty(attn.shape, dtype=geo.idx_dtype, device=value.device)  # (B, Lq, M, L, P)
        wts = attn.new_empty(4, *attn.shape)  # (4, B, Lq, M, L, P)
    for b0, b1, q0, q1 in geo.chunks(Lq, value.device):
        loc_c, attn_c = loc[b0:b1, q0:q1], attn[b0:b1, q0:q1]  # (k, nq, M, L, P, 2), (k, nq, M, L, P)
        base_out = keys[b0:b1, q0:q1] if need_value else None
        base, frac, pc, px = geo.corners(loc_c, b0, b1, base_out)  # (k, nq, M, L, P)
        if need_value:
            geo.weights(frac, attn_c, wts[:, b0:b1, q0:q1].unbind(0))
        if not (need_loc or need_attn):
            continue
        n = base[..., 0, 0].numel()
        idx = base[..., None, :, :] + geo.corner_off  # (k, nq, M, 4, L, P)
        gw = _corner_dots(idx.view(n, -1), grad_out[b0:b1, q0:q1].reshape(n, D), table)  # (n, 4*L*P)
        g0, g1, g2, g3 = gw.view(idx.shape).unbind(-3)  # (k, nq, M, L, P) each: d out / d corner weight
        fx, fy = frac[..., 0], frac[..., 1]  # (k, nq, M, L, P)
        dx0 = g1 - g0  # along x on row y0
        dx1 = g3 - g2  # along x on row y1
        h0 = torch.addcmul(g0, fx, dx0)  # interpolated along x on row y0
        dy = torch.addcmul(g2, fx, dx1).sub_(h0)  # row y1 minus row y0
        if need_attn:
            torch.addcmul(h0, fy, dy, out=grad_attn[b0:b1, q0:q1])
        if need_loc:
            gl = grad_loc[b0:b1, q0:q1]  # (k, nq, M, L, P, 2)
            dx0.addcmul_(fy, dx1.sub_(dx0))  # d out / d fx / attn
            torch.mul(dx0, attn_c, out=gl[..., 0])
            torch.mul(dy, attn_c, out=gl[..., 1])
            gl.mul_(geo.size).masked_fill_(pc != px, 0.0)  # d fx / d loc_x = W; zero where clamped
    grad_value = _transposed_gather(keys, wts, grad_out.view(-1, D), geo, torch.empty_like(value)) if need_value else None
    return grad_value, grad_loc, grad_attn


def _transposed_gather(keys, wts, g, geo: _Geometry, out: torch.Tensor) -> torch.Tensor:
    """Gradient of the padded table, unpadded into out: row r receives w_c(s) * g[bag(s)] for every sample s
    and corner c whose row is r.

    keys (B, Lq, M, L, P) top-left rows, wts (4, B, Lq, M, L, P), g (B*Lq*M, D) -> out (B, S, M, D).
    """
    M, LP = geo.M, geo.L * geo.P
    keys_sorted, perm = torch.sort(keys.view(-1), stable=True)  # (E,) E = B*Lq*M*L*P samples
    bags = perm.div(LP, rounding_mode="floor")  # (E,) the (query, head) bag of each sorted sample
    counts = torch.bincount(keys_sorted, minlength=geo.B * geo.rows)  # (B*rows,)
    offsets = torch.zeros_like(counts)
    torch.cumsum(counts[:-1], 0, out=offsets[1:])  # (B*rows,) start of each row's segment
    grad_table = None
    for c in range(4):
        w_sorted = wts[c].view(-1).index_select(0, perm)  # (E,)
        res = F.embedding_bag(bags, g, offsets, mode="sum", per_sample_weights=w_sorted)  # (B*rows, D)
        if c == 0:
            grad_table = res
            continue
        for b in range(geo.B):
            for lvl in range(geo.L):
                start = (b * geo.rows // M + geo.pad_starts[lvl]) * M
                stop = start + geo.pad_sizes[lvl] * M
                shift = (M if c != 2 else 0) + (geo.pad_w[lvl] * M if c >= 2 else 0)
                grad_table[start + shift : stop] += res[start : stop - shift]
    geo.unpad(grad_table, out)
    return out


class _MSDeformAttnFunction(torch.autograd.Function):
    """Fast path with a hand-written backward; saves only its inputs."""

    @staticmethod
    def forward(ctx, value, sampling_locations, attention_weights, shapes):
        value = value.contiguous()
        loc = sampling_locations.contiguous()
        attn = attention_weights.contiguous()
        B, _, M, _ = value.shape
        geo = _Geometry(shapes, B, M, loc.shape[4], value.dtype, value.device)
        ctx.geo = geo
        ctx.save_for_backward(value, loc, attn)
        return _fast_forward(value, loc, attn, geo)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        value, loc, attn = ctx.saved_tensors
        grads = _fast_backward(value, loc, attn, ctx.geo, grad_out, tuple(ctx.needs_input_grad[:3]))
        return (*grads, None)


def ms_deform_attn_fast(
    value: torch.Tensor, shapes: Shapes, sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> torch.Tensor:
    """Fast path; same arguments and result as ms_deform_attn_reference."""
    return _MSDeformAttnFunction.apply(value, sampling_locations, attention_weights, shapes)
