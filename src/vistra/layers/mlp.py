"""Feed-forward blocks: the transformer MLP, PVTv2's convolutional MLP, and stochastic depth."""
from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """Linear -> GELU -> Linear (official names fc1, fc2)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class DWConv(nn.Module):
    """Depthwise 3x3 convolution on a token sequence laid out as an H x W grid (official name dwconv.dwconv)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        B, N, C = x.shape
        grid = x.transpose(1, 2).reshape(B, C, H, W)  # (B, C, H, W)
        return self.dwconv(grid).flatten(2).transpose(1, 2)  # (B, N, C)


class ConvMlp(nn.Module):
    """PVTv2 feed-forward: fc1 -> [ReLU if linear] -> depthwise 3x3 conv -> GELU -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0, linear: bool = False):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.relu = nn.ReLU() if linear else nn.Identity()
        self.dwconv = DWConv(hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
        x = self.relu(self.fc1(x))
        x = self.drop(self.act(self.dwconv(x, H, W)))
        return self.drop(self.fc2(x))


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
