"""The classification section of `vistra demo`: a small ViT trained from scratch on the built-in digits."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from vistra.demo import DemoContext, SectionResult

DIGITS_TARGET_TOP1 = 97.0  # percent, val top-1 the section must reach
FIGURES = ("curves.png", "predictions.png", "attention.png")


def classification_section(ctx: DemoContext) -> SectionResult:
    """Digits-cls: train vit_digits, evaluate on val, draw predictions and attention rollout."""
    from vistra.classification.config import ClassifyConfig
    from vistra.classification.model_file import load_classifier
    from vistra.classification.presets import DIGITS_DATA_SIZE, DIGITS_RECIPE
    from vistra.classification.recipe import train_classify
    from vistra.classification.report import attention_grid, pick_examples, predict_folder, predictions_grid
    from vistra.config import resolve_config, set_key
    from vistra.data.digits import make_digits_cls
    from vistra.data.image_folder import ImageFolderDataset

    start = time.perf_counter()
    data_dir = ctx.data / "digits-cls"
    made = make_digits_cls(data_dir, img_size=DIGITS_DATA_SIZE)
    print(f"[classification] wrote {made['num_train']} train / {made['num_val']} val digit images to {data_dir}")

    cfg = resolve_config(ClassifyConfig, base=DIGITS_RECIPE)
    cfg = set_key(cfg, "data.root", str(data_dir), source="demo")
    cfg = set_key(cfg, "train.out_dir", str(ctx.runs / "classify"), source="demo")
    cfg = set_key(cfg, "train.progress", False, source="demo")  # sections share the console: no progress bars
    if ctx.epochs:
        cfg = set_key(cfg, "train.epochs", ctx.epochs, source="demo")
    train_start = time.perf_counter()
    summary = train_classify(cfg)
    train_time = time.perf_counter() - train_start

    model, info = load_classifier(summary["weights"])
    val = ImageFolderDataset(data_dir / "val")
    rows = predict_folder(model, info, val.samples, val.classes, progress=False)
    top1 = 100.0 * sum(r["pred"] == r["true"] for r in rows) / len(rows)
    shutil.copyfile(Path(cfg.train.out_dir) / "curves.png", ctx.report / "curves.png")
    predictions_grid(rows, ctx.report / "predictions.png")
    examples = [r["image"] for r in pick_examples([r for r in rows if r["pred"] == r["true"]], 6)]
    attention_grid(model, info, examples, ctx.report / "attention.png")

    errors = sum(r["pred"] != r["true"] for r in rows)
    metrics = {
        "model": info.model_name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": summary["epochs"],
        "best_epoch": summary["best_epoch"],
        "val_top1": round(top1, 2),
        "val_top5": round(summary["val_top5"], 2),
        "val_errors": errors,
        "num_train": summary["num_train"],
        "num_val": summary["num_val"],
        "train_time_s": round(train_time, 1),
        "time_s": round(time.perf_counter() - start, 1),
        "run_dir": cfg.train.out_dir,
    }
    grid = info.img_size // model.patch_size
    markdown = f"""## Classification: ViT on handwritten digits

{made['num_train']} train / {made['num_val']} val images (scikit-learn digits, {DIGITS_DATA_SIZE}x{DIGITS_DATA_SIZE}
PNGs, read at {info.img_size}x{info.img_size}), model `{info.model_name}` ({metrics['parameters'] / 1e6:.2f}M
parameters, {grid}x{grid} patch tokens), trained from scratch for {summary['epochs']} epochs (AdamW, warmup +
cosine, random-resized crop, label smoothing) in {train_time:.0f} s; the weights of epoch {summary['best_epoch']}
(best val top-1) are kept.

| metric | value |
|---|---|
| val top-1 | {top1:.2f}% (target >= {DIGITS_TARGET_TOP1:.0f}%) |
| val top-5 | {summary['val_top5']:.2f}% |
| val errors | {errors} of {len(rows)} |

![training curves](curves.png)

![predictions](predictions.png)

![attention rollout](attention.png)

Run folder: `{cfg.train.out_dir}` (config, metrics.jsonl, checkpoints, model.safetensors). Try
`vistra predict IMAGE --checkpoint {summary['weights']}`.
"""
    return SectionResult(
        name="classification",
        headline=f"val top-1 {top1:.2f}%",
        metrics=metrics,
        target=f"val top-1 >= {DIGITS_TARGET_TOP1:.0f}%",
        passed=None if ctx.epochs else top1 >= DIGITS_TARGET_TOP1,
        markdown=markdown,
        files=list(FIGURES),
    )
