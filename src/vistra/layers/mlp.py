"""Feed-forward blocks: the transformer MLP, PVTv2's convolutional MLP, and stochastic depth."""
from __future__ import annotations

import torch
from torch import nn

from vistra.layers.grid import grid_to_tokens, tokens_to_grid
from vistra.layers.inference import fast_inference
from vistra.layers.linear import Linear

# Inference runs PVTv2's convolutional MLP over the batch in chunks whose hidden activation (tokens x hidden
# floats) stays within this many bytes, so fc1 -> depthwise conv -> GELU -> fc2 work in cache. Unchunked at
# batch 8, stage 1 of pvt_v2_b2 streams three 51 MB tensors through main memory (each a fresh allocation that
# the kernel must map and zero); per image they are 6.4 MB.
CONV_MLP_CHUNK_BYTES = 4 * 2**20


def activation_(act: nn.Module, x: torch.Tensor, inplace: bool) -> torch.Tensor:
    """act(x); overwrites x when inplace and act is GELU or ReLU (x must be an intermediate nobody else holds)."""
    if inplace and type(act) is nn.GELU:
        return torch.ops.aten.gelu_(x, approximate=act.approximate)
    if inplace and type(act) is nn.ReLU:
        return x.relu_()
    return act(x)


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (official names fc1, fc2)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features); GELU in place on fc1's output when autograd is off."""
        hidden = activation_(self.act, self.fc1(x), inplace=fast_inference())  # (..., hidden_features)
        return self.drop(self.fc2(self.drop(hidden)))


class DWConv(nn.Module):
    """Depthwise 3x3 convolution on a token sequence laid out as an H x W grid (official name dwconv.dwconv)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """x (B, H*W, C) -> (B, H*W, C). The conv runs channels-last: the grid is a view of the tokens, and the
        output tokens come back contiguous, so neither side needs a copy."""
        grid = tokens_to_grid(x, H, W)  # (B, C, H, W), channels-last memory
        return grid_to_tokens(self.dwconv(grid))  # (B, N, C)


class ConvMlp(nn.Module):
    """PVTv2 feed-forward: fc1 -> [ReLU if linear] -> depthwise 3x3 conv -> GELU -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, linear: bool = False):
        super().__init__()
        self.fc1 = Linear(in_features, hidden_features)
        self.relu = nn.ReLU() if linear else nn.Identity()
        self.dwconv = DWConv(hidden_features)
        self.act = nn.GELU()
        self.fc2 = Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        """x (B, H*W, C) on an H x W grid -> (B, H*W, C).

        Without autograd the batch is processed in chunks of at most CONV_MLP_CHUNK_BYTES of hidden activation,
        with the activations in place; every image's result is the same as in one pass.
        """
        if not fast_inference():
            return self._forward(x, H, W, inplace=False)
        B, N, _ = x.shape
        chunk = max(1, CONV_MLP_CHUNK_BYTES // (N * self.fc1.out_features * x.element_size()))
        if chunk >= B:
            return self._forward(x, H, W, inplace=True)
        out = x.new_empty(B, N, self.fc2.out_features)  # (B, N, C)
        for start in range(0, B, chunk):
            out[start:start + chunk] = self._forward(x[start:start + chunk], H, W, inplace=True)
        return out

    def _forward(self, x: torch.Tensor, H: int, W: int, inplace: bool) -> torch.Tensor:
        x = activation_(self.relu, self.fc1(x), inplace)  # (b, N, hidden)
        x = activation_(self.act, self.dwconv(x, H, W), inplace)  # (b, N, hidden)
        return self.drop(self.fc2(self.drop(x)))  # (b, N, C)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability drop_prob while training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 to max_rate over depth blocks."""
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]
