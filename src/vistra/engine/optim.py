"""Parameter groups, the AdamW optimizer and per-step learning-rate schedules.

A param group is a dict `{"params": [...], "lr_scale": float, "weight_decay": float}`; the schedule's lr
times the group's `lr_scale` is the group's lr at every step.
"""

from __future__ import annotations

import fnmatch
import functools
import math
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from vistra.engine.config import TrainConfig

LrFn = Callable[[int], float]


def _matches(name: str, pattern: str) -> bool:
    """True when `pattern` is a glob matching `name`, or a module prefix of it ("backbone" -> "backbone.x")."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def build_param_groups(
    model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Split the trainable parameters of `model` into groups by (lr_scale, weight decay).

    No weight decay for parameters with ndim <= 1 (biases, norm weights) and for names returned by
    `model.no_weight_decay()` when the model has it (exact names or globs). `lr_scales` maps a glob or a
    module prefix to an lr multiplier, e.g. `{"backbone.*": 0.1}`; the first matching entry wins and
    unmatched parameters get 1.0. A pattern that matches no trainable parameter raises ValueError.
    """
    lr_scales = dict(lr_scales or {})
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    used_patterns: set[str] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = 1.0
        for pattern, pattern_scale in lr_scales.items():
            if _matches(name, pattern):
                scale = float(pattern_scale)
                used_patterns.add(pattern)
                break
        no_decay = param.ndim <= 1 or any(_matches(name, s) for s in skip)
        decay = 0.0 if no_decay else float(weight_decay)
        group = groups.setdefault((scale, decay), {"params": [], "lr_scale": scale, "weight_decay": decay})
        group["params"].append(param)
    unused = [p for p in lr_scales if p not in used_patterns]
    if unused:
        names = [n for n, p in model.named_parameters() if p.requires_grad][:8]
        raise ValueError(
            f"lr_scales patterns {unused} match no trainable parameter of {type(model).__name__} "
            f"(names look like {names}); use a glob such as 'backbone.*' or a module prefix"
        )
    return list(groups.values())


# A transformer block or ResNet bottleneck: "blocks.3.", "block2.0." (PVT stages), "layer4.1." (ResNet stages).
_BLOCK = re.compile(r"((?:.*\.)?(?:blocks|block\d+|layer\d+)\.\d+)\.")


def layer_depths(module: nn.Module) -> tuple[dict[str, int], int]:
    """({parameter name: depth}, deepest depth) of a backbone: 0 for what comes before the first block (patch
    embedding, stem, tokens), k for the k-th block in registration order, k + 1 for what follows block k
    (a stage's downsampling and norms, the final norm)."""
    blocks: dict[str, int] = {}
    depths: dict[str, int] = {}
    for name, _ in module.named_parameters():
        m = _BLOCK.match(name)
        depths[name] = blocks.setdefault(m[1], len(blocks) + 1) if m else (len(blocks) + 1 if blocks else 0)
    return depths, max(depths.values(), default=0)


def backbone_lr_scales(module: nn.Module, prefix: str, scale: float, layer_decay: float = 1.0) -> dict[str, float]:
    """lr_scales (for build_param_groups) of the backbone `module` found at `prefix` in the model: every
    parameter at `scale`, times layer_decay ** (deepest depth - its depth) when layer_decay < 1 (layer-wise lr
    decay: the deepest layers learn at `scale`, the stem at the smallest lr). Frozen parameters get none."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"layer_decay={layer_decay} must be in (0, 1]")
    if layer_decay == 1.0:
        trainable = any(p.requires_grad for p in module.parameters())
        return {prefix: scale} if trainable else {}
    depths, deepest = layer_depths(module)
    return {f"{prefix}.{name}": scale * layer_decay ** (deepest - depths[name])
            for name, p in module.named_parameters() if p.requires_grad}


def build_optimizer(param_groups: Iterable[dict[str, Any]], cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`; missing `lr_scale` defaults to 1.0 and missing `weight_decay` to cfg's."""
    groups = []
    for i, group in enumerate(param_groups):
        if "params" not in group:
            raise ValueError(f"param group {i} has no 'params' key (keys: {sorted(group)})")
        group = dict(group)
        group["params"] = list(group["params"])
        group.setdefault("lr_scale", 1.0)
        group.setdefault("weight_decay", cfg.weight_decay)
        group["lr"] = cfg.lr * group["lr_scale"]
        groups.append(group)
    if not any(group["params"] for group in groups):
        raise ValueError("no trainable parameters: every param group is empty")
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def cosine_with_warmup(
    step: int, *, base_lr: float, min_lr: float, warmup_steps: int, total_steps: int
) -> float:
    """Lr at optimizer step `step` (0-based): linear warmup to base_lr, then cosine to min_lr at the last step."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def step_with_warmup(
    step: int,
    *,
    base_lr: float,
    warmup_steps: int,
    steps_per_epoch: int,
    drop_epochs: list[int],
    drop_factor: float,
) -> float:
    """Lr at optimizer step `step`: linear warmup, then base_lr times drop_factor per reached drop epoch.

    A drop epoch d applies once d epochs are complete, i.e. from step d * steps_per_epoch on.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    completed_epochs = step // steps_per_epoch
    drops = sum(1 for d in drop_epochs if completed_epochs >= d)
    return base_lr * drop_factor**drops


def build_lr_fn(cfg: TrainConfig, steps_per_epoch: int) -> LrFn:
    """The schedule of `cfg` as a function from optimizer step (0-based) to lr."""
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "cosine":
        return functools.partial(
            cosine_with_warmup,
            base_lr=cfg.lr,
            min_lr=cfg.min_lr,
            warmup_steps=warmup_steps,
            total_steps=cfg.epochs * steps_per_epoch,
        )
    return functools.partial(
        step_with_warmup,
        base_lr=cfg.lr,
        warmup_steps=warmup_steps,
        steps_per_epoch=steps_per_epoch,
        drop_epochs=list(cfg.lr_drop_epochs),
        drop_factor=cfg.lr_drop_factor,
    )


class StepwiseLR:
    """Sets each param group's lr to `lr_fn(step) * group["lr_scale"]`; `step()` after every optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_fn: LrFn) -> None:
        self.optimizer = optimizer
        self.lr_fn = lr_fn
        self.step_count = 0
        self._apply()

    @property
    def lr(self) -> float:
        """The schedule's lr (before lr_scale) for the coming optimizer step."""
        return self.lr_fn(self.step_count)

    def step(self) -> None:
        self.step_count += 1
        self._apply()

    def _apply(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step_count}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step_count = int(state["step"])
        self._apply()
