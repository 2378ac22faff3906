"""Exponential moving average (EMA) of a model's weights."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEma:
    """A frozen copy of a model whose floating-point parameters and buffers track the model's as an EMA.

    After `update(model)`: ema = decay * ema + (1 - decay) * model for floating-point tensors; integer
    buffers (e.g. BatchNorm's `num_batches_tracked`) are copied. `module` is kept in eval mode.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average one step towards the current weights of `model`."""
        ema_state = self.module.state_dict()
        model_state = model.state_dict()
        if ema_state.keys() != model_state.keys():
            missing = sorted(set(model_state) ^ set(ema_state))[:8]
            raise KeyError(f"EMA and model state_dict keys differ (e.g. {missing})")
        ema_float, model_float = [], []
        for key, ema_tensor in ema_state.items():
            if ema_tensor.dtype.is_floating_point:
                ema_float.append(ema_tensor)
                model_float.append(model_state[key].detach())
            else:
                ema_tensor.copy_(model_state[key])
        if ema_float:
            torch._foreach_lerp_(ema_float, model_float, 1.0 - self.decay)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "decay": self.decay, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
