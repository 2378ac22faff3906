"""The typed config of a classification run: model, data, augmentation and the engine's TrainConfig."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vistra.config import load_yaml, resolve_config, set_key, to_dict
from vistra.engine.config import TrainConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelSection:
    """Which model to build. img_size None keeps the preset's; kwargs are extra create_model overrides."""

    name: str | None = None
    pretrained: str | None = None
    img_size: int | None = None
    drop_path_rate: float = 0.1
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSection:
    """Where the ImageFolder splits are (root/train, root/val) and how eval images are prepared."""

    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    skip_bad: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"
    crop_pct: float = 0.875
    eval_batch_size: int | None = None


@dataclass
class AugSection:
    """DeiT training augmentation: random-resized crop, flip, jitter, erasing, Mixup/CutMix, smoothing."""

    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float | None = None
    random_erasing: float = 0.25
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1


def _train_defaults() -> TrainConfig:
    return TrainConfig(out_dir="runs/classify", best_metric="val_top1", lr=5e-4, weight_decay=0.05)


@dataclass
class ClassifyConfig:
    """Everything a `vistra train classify` run uses; saved resolved as run_config.yaml in the run folder."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    aug: AugSection = field(default_factory=AugSection)
    train: TrainConfig = field(default_factory=_train_defaults)


RUN_CONFIG = "run_config.yaml"  # the resolved ClassifyConfig in the run folder (the engine writes config.yaml)


def resolve_classify_config(
    yaml_path: str | None = None,
    sets: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
    resume: bool = False,
) -> ClassifyConfig:
    """Defaults <- [on resume: the run folder's run_config.yaml] <- YAML <- command-line flags <- `--set` items.

    `flags` maps dotted keys to values given by dedicated options (--model, --data, --out...); None values
    are ignored. Raises ValueError (or FileNotFoundError for a missing YAML) naming the key or file.
    """
    given = {k: v for k, v in (flags or {}).items() if v is not None}

    def layered(base: Mapping[str, Any] | None) -> ClassifyConfig:
        cfg = resolve_config(ClassifyConfig, yaml_path, base=base)
        for key, value in given.items():
            cfg = set_key(cfg, key, value, source="command line")
        return resolve_config(ClassifyConfig, sets=sets, base=to_dict(cfg))

    cfg = layered(None)
    saved = Path(cfg.train.out_dir) / RUN_CONFIG
    if resume and saved.is_file():
        cfg = layered(load_yaml(saved))
    return cfg
