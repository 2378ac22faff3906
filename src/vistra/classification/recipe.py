"""Train and evaluate an image classifier (DeiT recipe) on ImageFolder data with the shared engine."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistra.atomic_io import write_json_atomic
from vistra.classification.config import RUN_CONFIG, ClassifyConfig
from vistra.classification.evaluate import evaluate, label_map, readable_only
from vistra.classification.model_file import ClassifierInfo, load_classifier, save_classifier
from vistra.config import save_config
from vistra.data.errors import DataError
from vistra.layers.linear import use_packed_weights

SUMMARY = "summary.json"


@dataclass
class ClassifyData:
    """The two splits of a run, with the mapping of val labels onto the train classes."""

    train: Any  # ImageFolderDataset yielding ((3, S, S) float tensor, label)
    val: Any
    val_to_train: torch.Tensor  # (num val classes,) int64

    @property
    def classes(self) -> list[str]:
        return list(self.train.classes)

    def bad_files(self) -> list[str]:
        """Unreadable files passed over so far (with skip_bad), in this process."""
        return sorted(set(self.train.bad_files) | set(self.val.bad_files))


def build_data(cfg: ClassifyConfig) -> ClassifyData:
    """ImageFolder datasets of root/train and root/val, without transforms yet (see set_transforms)."""
    from vistra.data.image_folder import ImageFolderDataset

    if not cfg.data.root:
        raise ValueError("no dataset given: pass --data ROOT (a folder with train/ and val/ ImageFolders)")
    root, d = Path(cfg.data.root), cfg.data
    if not root.is_dir():
        raise DataError(root, "dataset folder does not exist")
    for split in (d.train_split, d.val_split):
        if not (root / split).is_dir():
            raise DataError(root, f"has no {split}/ folder (expected {root}/{d.train_split}/<class>/<image> "
                                  f"and {root}/{d.val_split}/<class>/<image>)")
    train = ImageFolderDataset(root / d.train_split, skip_bad=d.skip_bad)
    val = ImageFolderDataset(root / d.val_split, skip_bad=d.skip_bad)
    return ClassifyData(train, val, label_map(val.classes, train.classes, str(root / d.val_split)))


def set_transforms(data: ClassifyData, cfg: ClassifyConfig, img_size: int) -> None:
    """DeiT augmentation on the train split, resize + center crop on val; both give (3, img_size, img_size)."""
    from vistra.data.cls_transforms import build_eval_transform, build_train_transform

    aug, d = cfg.aug, cfg.data
    data.train.transform = build_train_transform(
        img_size, scale=aug.scale, ratio=aug.ratio, hflip=aug.hflip, color_jitter=aug.color_jitter,
        mean=d.mean, std=d.std, random_erasing=aug.random_erasing, interpolation=d.interpolation,
    )
    data.val.transform = build_eval_transform(img_size, crop_pct=d.crop_pct, mean=d.mean, std=d.std,
                                              interpolation=d.interpolation)


def build_model(cfg: ClassifyConfig, num_classes: int) -> tuple[nn.Module, dict[str, Any], int]:
    """The model of the run -> (model, create_model overrides to rebuild it, input size)."""
    import vistra.classification.presets  # noqa: F401  (registers the demo presets)
    from vistra.registry import create_model

    if not cfg.model.name:
        raise ValueError("no model given: pass --model NAME (see `vistra.list_models()`)")
    kwargs: dict[str, Any] = {"num_classes": num_classes, **cfg.model.kwargs}
    if cfg.model.img_size:
        kwargs["img_size"] = cfg.model.img_size
    try:
        model = create_model(cfg.model.name, pretrained=cfg.model.pretrained,
                             drop_path_rate=cfg.model.drop_path_rate, **kwargs)
    except TypeError as err:  # an argument the model does not take, from model.kwargs
        raise ValueError(f"model {cfg.model.name} with model.kwargs {cfg.model.kwargs}: {err}") from None
    img_size = cfg.model.img_size or int(getattr(getattr(model, "config", None), "img_size", 224))
    if hasattr(getattr(model, "config", None), "img_size"):
        kwargs["img_size"] = img_size
    return model, kwargs, img_size


def make_step_fn(cfg: ClassifyConfig, num_classes: int):
    """step_fn(model, (images (B,3,S,S), labels (B,))) -> (loss, logs) with Mixup/CutMix and label smoothing."""
    from vistra.data.cls_transforms import MixupCutmix, classification_loss

    aug = cfg.aug
    mixes = aug.mix_prob > 0 and (aug.mixup_alpha > 0 or aug.cutmix_alpha > 0)
    mixer = MixupCutmix(num_classes, mixup_alpha=aug.mixup_alpha, cutmix_alpha=aug.cutmix_alpha, prob=aug.mix_prob,
                        switch_prob=aug.switch_prob, label_smoothing=aug.label_smoothing) if mixes else None

    def step_fn(model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, float]]:
        images, labels = batch
        targets = labels
        if mixer is not None:
            images, targets = mixer(images, labels)  # targets (B, K) soft
        logits = model(images)  # (B, K)
        loss = classification_loss(logits, targets, label_smoothing=aug.label_smoothing)
        if mixer is not None:  # mixed images have no single right answer
            return loss, {}
        return loss, {"top1": 100.0 * float((logits.argmax(dim=1) == labels).float().mean())}

    return step_fn


def make_eval_fn(cfg: ClassifyConfig, data: ClassifyData):
    """eval_fn(model) -> {"val_top1", "val_top5" (percent), "val_loss"} on the val split."""
    batch_size = cfg.data.eval_batch_size or 2 * cfg.train.batch_size
    val = readable_only(data.val, progress=cfg.train.progress)  # with skip_bad, bad files are not counted

    def eval_fn(model: nn.Module) -> dict[str, float]:
        metrics = evaluate(model, val, batch_size=batch_size, num_workers=cfg.train.num_workers,
                           mapping=data.val_to_train, progress=cfg.train.progress, desc="val")
        return {"val_top1": metrics["top1"], "val_top5": metrics["top5"], "val_loss": metrics["loss"]}

    return eval_fn


def train_classify(cfg: ClassifyConfig, resume: bool = False) -> dict[str, Any]:
    """Train per `cfg`; writes the run folder (cfg.train.out_dir) and returns a summary dict.

    Run folder: run_config.yaml (resolved), the engine's config.yaml, metrics.jsonl, curves.png, last.pt,
    best.pt, then model.safetensors + model.json (the best epoch's weights, EMA ones when EMA is on) and
    summary.json.
    """
    from vistra.engine import Trainer
    from vistra.trained import final_weights

    start = time.perf_counter()
    out = Path(cfg.train.out_dir)
    torch.manual_seed(cfg.train.seed)  # the same initial weights for the same seed
    data = build_data(cfg)
    model, model_kwargs, img_size = build_model(cfg, len(data.classes))
    set_transforms(data, cfg, img_size)
    save_config(cfg, out / RUN_CONFIG)
    trainer = Trainer(model, cfg.train, data.train, make_step_fn(cfg, len(data.classes)), make_eval_fn(cfg, data))
    history = trainer.fit(resume=resume)

    info = ClassifierInfo(model_name=str(cfg.model.name), classes=data.classes, model_kwargs=model_kwargs,
                          img_size=img_size, mean=cfg.data.mean, std=cfg.data.std, crop_pct=cfg.data.crop_pct,
                          interpolation=cfg.data.interpolation)
    weights = save_classifier(final_weights(trainer), out, info)
    evaluated = [r for r in history if "val_top1" in r]
    shipped = max(evaluated, key=lambda r: r["val_top1"], default={})  # best.pt holds the first best epoch
    summary = {
        "out_dir": str(out),
        "model": cfg.model.name,
        "weights": str(weights),
        "epochs": len(history),
        "val_top1": shipped.get("val_top1"),  # of the shipped weights (the best epoch's)
        "val_top5": shipped.get("val_top5"),
        "best_epoch": shipped.get("epoch"),
        "last_val_top1": evaluated[-1]["val_top1"] if evaluated else None,
        "num_train": len(data.train),
        "num_val": len(data.val) - len(data.val.bad_files),  # bad val files are left out of the metrics
        "skipped_files": data.bad_files(),
        "time_s": time.perf_counter() - start,
    }
    write_json_atomic(out / SUMMARY, summary)
    return summary


def eval_classify(
    checkpoint: str,
    data_root: str,
    model_name: str | None = None,
    out: str | None = None,
    batch_size: int = 128,
    num_workers: int = 0,
    skip_bad: bool = False,
    progress: bool = True,
    packed_weights: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 of a trained classifier on one ImageFolder; also written to out (default: beside it).
    packed_weights: run on MKL-packed linear weights (vistra.layers.use_packed_weights).

    Returns {"checkpoint", "data", "model", "top1", "top5", "loss", "num_images", "skipped_files", "json"}.
    """
    from vistra.data.image_folder import ImageFolderDataset

    model, info = load_classifier(checkpoint, model_name)
    if packed_weights:
        use_packed_weights(model)
    dataset = ImageFolderDataset(data_root, transform=info.build_eval_transform(), skip_bad=skip_bad)
    mapping = label_map(dataset.classes, info.classes, str(data_root))
    metrics = evaluate(model, readable_only(dataset, progress), batch_size=batch_size, num_workers=num_workers,
                       mapping=mapping, progress=progress, desc=f"eval {Path(data_root).name}")
    out_dir = Path(out) if out else Path(checkpoint if Path(checkpoint).is_dir() else Path(checkpoint).parent)
    result = {"checkpoint": str(checkpoint), "data": str(data_root), "model": info.model_name, **metrics,
              "skipped_files": dataset.bad_files}
    path = out_dir / "eval_metrics.json"
    result["json"] = str(path)
    write_json_atomic(path, result)
    return result
