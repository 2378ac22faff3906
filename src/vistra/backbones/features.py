"""A uniform feature-extractor view of any backbone: forward returns a list of maps."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class FeatureExtractor(nn.Module):
    """Wraps a backbone that implements forward_pyramid; forward(x) -> list of (B, C_i, H/s_i, W/s_i) maps.

    feature_info lists {"num_chs", "reduction", "index"} of the selected outputs, so dense heads can be built
    for any backbone without special cases.
    """

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None):
        super().__init__()
        available = len(model.feature_info)
        if out_indices is None:
            out_indices = tuple(range(available))
        out_indices = tuple(i % available if i < 0 else i for i in out_indices)
        bad = [i for i in out_indices if not 0 <= i < available]
        if bad:
            raise ValueError(f"out_indices {bad} out of range: the model has {available} feature levels")
        self.model = model
        self.out_indices = out_indices
        self.feature_info = [dict(model.feature_info[i], index=i) for i in out_indices]

    @property
    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    @property
    def strides(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_pyramid(x, self.out_indices)
