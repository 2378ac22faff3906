"""nn.Linear with an opt-in CPU inference path on MKL-packed weights, and the switch that turns it on in a model.

MKL's sgemm repacks the weight matrix on every call; at ViT's batch-1 shapes (197 rows) that repacking is a large
part of the product. A packed copy made once for the row count in use skips it. The copy is about twice the
weight's size, so the path is off unless `use_packed_weights(model)` asks for it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vistra.layers.inference import fast_inference


def packed_weights_supported() -> bool:
    """True when this torch build has MKL and its packed-sgemm linear ops."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


class Linear(nn.Linear):
    """nn.Linear (same parameters and names); with `packed` set, inference on CPU float32 multiplies by a
    packed copy of the weight, made when the same row count comes twice in a row and remade when the weight
    changes. Training, autograd, tracing, export and compilation always take F.linear."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.packed = False
        self._pack: tuple[tuple, torch.Tensor] | None = None  # ((rows, weight ptr, weight version), packed)
        self._last_rows = -1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) -> (..., out_features)."""
        pack = self._packed_weight(x) if self.packed and self._packable(x) else None
        if pack is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkl._mkl_linear(x, pack, self.weight, self.bias, self._pack[0][0])  # (..., out_features)

    def _packable(self, x: torch.Tensor) -> bool:
        return (x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.numel() > 0 and fast_inference())

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor | None:
        """The packed weight for x's row count, (re)made when that count comes a second time in a row; None before."""
        rows = x.numel() // self.in_features
        version = 0 if self.weight.is_inference() else self.weight._version  # inference tensors keep no version
        key = (rows, self.weight.data_ptr(), version)
        if self._pack is None or self._pack[0] != key:
            seen_before, self._last_rows = self._last_rows == rows, rows
            if not seen_before:  # a row count seen once may never come back: not worth packing for
                return None
            self._pack = key, torch.ops.mkl._mkl_reorder_linear_weight(self.weight, rows)
        return self._pack[1]

    def drop_packed(self) -> None:
        """Free the packed copy."""
        self._pack, self._last_rows = None, -1


def use_packed_weights(model: nn.Module, enabled: bool = True) -> int:
    """Switch the packed-weight inference path of every vistra Linear in model on (or off, freeing the copies);
    returns how many layers it switched. Raises ValueError when enabling on a torch build without MKL."""
    if enabled and not packed_weights_supported():
        raise ValueError("packed weights need a torch build with MKL (x86 CPUs); this one has none")
    layers = [m for m in model.modules() if isinstance(m, Linear)]
    for layer in layers:
        layer.packed = enabled
        if not enabled:
            layer.drop_packed()
    return len(layers)
