"""TrainConfig: every knob of the training loop, typed, validated and serialisable to plain types."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vistra.atomic_io import write_text_atomic

SCHEDULES = ("cosine", "step")
BEST_MODES = ("max", "min")
COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")  # vistra.export.compile.BACKENDS


@dataclass
class TrainConfig:
    """Settings of one training run (task independent).

    Schedule: the learning rate is set before every optimizer step. It rises linearly from ~0 to `lr`
    over `warmup_epochs` (may be fractional), then either follows a cosine down to `min_lr` at the last
    step (`schedule="cosine"`) or is multiplied by `lr_drop_factor` once for every entry of
    `lr_drop_epochs` that the number of completed epochs has reached (`schedule="step"`, DETR style:
    `lr_drop_epochs=[200]` trains epochs 1..200 at `lr` and epoch 201 on at `lr * lr_drop_factor`).

    Evaluation: `eval_fn` runs every `eval_every` epochs and after the last one. With EMA on it gets the
    EMA model; when `eval_raw` is also set the raw model is evaluated too and logged as `raw_<name>`.
    `best_metric` names an eval metric; out_dir/best.pt is written whenever it improves (`best_mode`).

    Compilation: with `compile` the training steps run the model through torch.compile (vistra.export.
    compile_model) with `compile_backend` ("inductor", or "aot_eager" to check graph capture without code
    generation); evaluation, EMA and checkpoints use the model itself.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr: float = 1e-6
    schedule: str = "cosine"
    lr_drop_epochs: list[int] = field(default_factory=list)
    lr_drop_factor: float = 0.1
    clip_grad: float | None = None
    ema_decay: float | None = None
    amp: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    seed: int = 0
    num_workers: int = 0
    drop_last: bool = True
    eval_every: int = 1
    eval_raw: bool = True
    best_metric: str | None = None
    best_mode: str = "max"
    device: str = "auto"
    progress: bool = True
    out_dir: str = "runs/train"

    def __post_init__(self) -> None:
        self.out_dir = str(self.out_dir)
        self.lr_drop_epochs = [int(e) for e in self.lr_drop_epochs]
        self._check(self.epochs >= 1, "epochs", "must be >= 1")
        self._check(self.batch_size >= 1, "batch_size", "must be >= 1")
        self._check(self.lr > 0, "lr", "must be > 0")
        self._check(self.min_lr >= 0, "min_lr", "must be >= 0")
        self._check(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        self._check(self.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
        self._check(self.schedule in SCHEDULES, "schedule", f"must be one of {SCHEDULES}")
        self._check(0 < self.lr_drop_factor <= 1, "lr_drop_factor", "must be in (0, 1]")
        self._check(all(e >= 1 for e in self.lr_drop_epochs), "lr_drop_epochs", "entries must be >= 1")
        self._check(self.clip_grad is None or self.clip_grad > 0, "clip_grad", "must be None or > 0")
        self._check(
            self.ema_decay is None or 0 < self.ema_decay < 1, "ema_decay", "must be None or in (0, 1)"
        )
        self._check(self.num_workers >= 0, "num_workers", "must be >= 0")
        self._check(self.eval_every >= 1, "eval_every", "must be >= 1")
        self._check(self.best_mode in BEST_MODES, "best_mode", f"must be one of {BEST_MODES}")
        self._check(self.compile_backend in COMPILE_BACKENDS, "compile_backend", f"must be one of {COMPILE_BACKENDS}")

    def _check(self, ok: bool, name: str, rule: str) -> None:
        if not ok:
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r} {rule}")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain python types (safe for JSON, YAML and `torch.load(weights_only=True)`)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict; unknown keys raise a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**values)

    def write_yaml(self, path: str | Path) -> None:
        """Write the resolved config as YAML (one key per line, in field order)."""
        write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
