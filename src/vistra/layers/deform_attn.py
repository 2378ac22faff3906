"""Multi-scale deformable attention (Zhu et al., ICLR 2021): the functional op and the module.

    out = ms_deform_attn(value, shapes, sampling_locations, attention_weights, padding_mask, impl="auto")
    attn = MSDeformAttn(d_model=256, n_levels=4, n_heads=8, n_points=4)    # official parameter names

Implementations of the op (all give the same result; see tests/test_deform_attn.py):
    "reference"  the paper's pure-PyTorch fallback, one F.grid_sample per level (deform_attn_core.py);
    "fast"       pure PyTorch, one fused gather over all levels and a hand-written backward (deform_attn_core.py);
    "native"     a small C/OpenMP kernel compiled on first use, CPU float32/float64 (deform_attn_native.py);
    "auto"       "native" where it applies and builds, else "fast"; "reference" while torch.compile or
                 torch.export traces the model (the other two are opaque to graph capture: a ctypes call, and an
                 autograd.Function writing into strided outputs). Importing vistra never compiles anything.

`override_impl(model, impl)` switches every MSDeformAttn inside a model for the duration of a with-block
(ONNX export runs the reference path: ONNX has GridSample, and nothing for the other two).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from vistra.layers import deform_attn_native
from vistra.layers.deform_attn_core import (
    Shapes,
    as_shape_list,
    ms_deform_attn_fast,
    ms_deform_attn_reference,
)

IMPLS = ("auto", "reference", "fast", "native")


def resolve_impl(impl: str, value: torch.Tensor) -> str:
    """The implementation "auto" picks for these inputs (other names are checked and returned)."""
    if impl not in IMPLS:
        raise ValueError(f"deformable attention impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    if torch.compiler.is_compiling():  # also true under torch.export
        return "reference"
    return "native" if deform_attn_native.supports(value) else "fast"


def ms_deform_attn(
    value: torch.Tensor,
    spatial_shapes: Shapes | torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Sample every level's value map at the given locations and sum the samples with the attention weights.

    Args:
        value: (B, S, M, D), S = sum of H_l * W_l, the levels' maps flattened row-major one after another.
        spatial_shapes: (H_l, W_l) per level, as Python ints or an (L, 2) integer tensor.
        sampling_locations: (B, Lq, M, L, P, 2), (x, y) in [0, 1] relative to each level's map; bilinear with
            zeros outside the map (grid_sample, align_corners=False).
        attention_weights: (B, Lq, M, L, P).
        padding_mask: (B, S) bool, True = padding: those value rows read as zeros.
        impl: "auto", "reference", "fast" or "native" (see the module docstring).
    Returns:
        (B, Lq, M * D).
    """
    shapes = as_shape_list(spatial_shapes)
    B, S, M, D = value.shape
    if S != sum(h * w for h, w in shapes):
        raise ValueError(f"value has {S} rows but spatial_shapes {shapes} have {sum(h * w for h, w in shapes)} pixels")
    if sampling_locations.shape[:3] != (B, sampling_locations.shape[1], M) or sampling_locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be (B, Lq, M, L, P, 2) = ({B}, Lq, {M}, {len(shapes)}, P, 2), "
                         f"got {tuple(sampling_locations.shape)}")
    if sampling_locations.shape[3] != len(shapes) or attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"{len(shapes)} levels: sampling_locations {tuple(sampling_locations.shape)} and "
                         f"attention_weights {tuple(attention_weights.shape)} do not agree")
    if padding_mask is not None:
        value = value.masked_fill(padding_mask[:, :, None, None], 0.0)
    kind = resolve_impl(impl, value)
    if kind == "reference":
        return ms_deform_attn_reference(value, shapes, sampling_locations, attention_weights)
    if kind == "native":
        return deform_attn_native.ms_deform_attn_native(value, shapes, sampling_locations, attention_weights)
    return ms_deform_attn_fast(value, shapes, sampling_locations, attention_weights)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with the official parameters (sampling_offsets, attention_weights,
    value_proj, output_proj) and initialisation: offsets start on rings around the reference point, one direction
    per head, point k at distance k + 1; attention weights start uniform."""

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 impl: str = "auto"):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by n_heads {n_heads}")
        if impl not in IMPLS:
            raise ValueError(f"deformable attention impl must be one of {IMPLS}, got {impl!r}")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.impl = impl
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official initialisation."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)  # (M, 2)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]  # on the square of side 2
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)  # (M, L, P, 2)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: Shapes, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend from each query to P points per head and level around its reference point.

        Args:
            query: (B, Lq, d_model), position already added.
            reference_points: (B, Lq, L, 2) points (x, y) in [0, 1], or (B, Lq, L, 4) boxes (cx, cy, w, h): then
                offsets are relative to the box, scaled by w / (2 P) and h / (2 P).
            input_flatten: (B, S, d_model) the value maps of every level, flattened.
            spatial_shapes: (H_l, W_l) per level (Python ints).
            padding_mask: (B, S) bool, True = padding, or None.
        Returns:
            (B, Lq, d_model).
        """
        B, Lq, _ = query.shape
        S = input_flatten.shape[1]
        M, L, P = self.n_heads, self.n_levels, self.n_points
        if len(spatial_shapes) != L:
            raise ValueError(f"MSDeformAttn has {L} levels, got spatial_shapes for {len(spatial_shapes)}")
        value = self.value_proj(input_flatten).view(B, S, M, self.d_model // M)  # (B, S, M, D)
        offsets = self.sampling_offsets(query).view(B, Lq, M, L, P, 2)  # (B, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(B, Lq, M, L * P)
        weights = F.softmax(weights, -1).view(B, Lq, M, L, P)  # (B, Lq, M, L, P)
        if reference_points.shape[-1] == 2:
            wh = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=offsets.dtype, device=offsets.device)
            loc = reference_points[:, :, None, :, None, :] + offsets / wh[:, None, :]  # (B, Lq, M, L, P, 2)
        elif reference_points.shape[-1] == 4:
            loc = (reference_points[:, :, None, :, None, :2]
                   + offsets / P * reference_points[:, :, None, :, None, 2:] * 0.5)  # (B, Lq, M, L, P, 2)
        else:
            raise ValueError(f"reference_points must end in 2 (points) or 4 (boxes), got {tuple(reference_points.shape)}")
        out = ms_deform_attn(value, spatial_shapes, loc, weights, padding_mask, self.impl)  # (B, Lq, d_model)
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
                f"n_points={self.n_points}, impl={self.impl!r}")


@contextlib.contextmanager
def override_impl(model: nn.Module, impl: str) -> Iterator[None]:
    """Run every MSDeformAttn inside `model` with `impl` within the with-block; their own settings come back after."""
    if impl not in IMPLS:
        raise ValueError(f"deformable attention impl must be one of {IMPLS}, got {impl!r}")
    modules = [m for m in model.modules() if isinstance(m, MSDeformAttn)]
    saved = [m.impl for m in modules]
    try:
        for m in modules:
            m.impl = impl
        yield
    finally:
        for m, old in zip(modules, saved):
            m.impl = old
