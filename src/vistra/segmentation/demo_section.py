"""The segmentation section of `vistra demo`: digits-seg data, a small PVTv2 + semantic FPN trained from scratch,
its val mIoU, and a figure of images / ground truth / predictions."""
from __future__ import annotations

import time
from typing import Any

import numpy as np
from PIL import Image

MODEL = "semfpn_pvt_v2_digits"
TARGET_MIOU = 40.0  # percent, val mIoU the section must reach (44% measured)
# Canvases of 32-40 px with one or two digits of 20-28 px: small enough to train in about a minute on a CPU.
DATA = {"n_train": 1200, "n_val": 100, "min_size": 32, "max_size": 40, "max_digits": 2, "digit_sizes": (20, 28)}
SETTINGS: dict[str, Any] = {
    "crop_size": 40, "scale": [40, 40], "ratio_range": [0.8, 1.25], "cat_max_ratio": 1.0, "hflip": 0.0,
    "photometric": False, "eval_scale": None, "head_lr_scale": 1.0, "lr": 3e-3, "weight_decay": 0.01,
    "batch_size": 32, "epochs": 8, "warmup_epochs": 0.3, "eval_every": 8, "progress": False,
}
FIGURE = "segmentation.png"


def segmentation_section(ctx) -> Any:
    """Train MODEL on digits-seg (ctx.data/digits-seg) into ctx.runs/segment; report val mIoU and a figure."""
    from vistra.data.digits_seg import make_digits_seg
    from vistra.demo import SectionResult
    from vistra.segmentation.evaluate import eval_segment
    from vistra.segmentation.recipe import train_segment

    start = time.perf_counter()
    data_dir, run_dir = ctx.data / "digits-seg", ctx.runs / "segment"
    made = make_digits_seg(data_dir, seed=0, **DATA)
    print(f"[segmentation] wrote {made['num_train']} train / {made['num_val']} val canvases to {data_dir}")
    settings = dict(SETTINGS, epochs=ctx.epochs or SETTINGS["epochs"])
    train_start = time.perf_counter()
    summary = train_segment(MODEL, data_dir, run_dir, settings)
    train_time = time.perf_counter() - train_start
    result = eval_segment(run_dir, data_dir, "val", device="cpu", progress=False)
    predictions_figure(run_dir, data_dir, ctx.report / FIGURE)

    miou = 100 * result["mIoU"]
    metrics = {
        "model": MODEL,
        "parameters": _parameter_count(run_dir),
        "epochs": len(summary["history"]),
        "val_mIoU": round(miou, 2),
        "val_pixel_acc": round(100 * result["pixel_acc"], 2),
        "val_mean_acc": round(100 * result["mean_acc"], 2),
        "val_per_class_iou": {k: None if v is None else round(100 * v, 1) for k, v in result["per_class_iou"].items()},
        "num_train": summary["num_train"],
        "num_val": summary["num_val"],
        "train_time_s": round(train_time, 1),
        "time_s": round(time.perf_counter() - start, 1),
        "run_dir": str(run_dir),
    }
    passed = None if ctx.epochs else miou >= TARGET_MIOU
    per_class = " | ".join(f"{v if v is not None else 'n/a'}" for v in metrics["val_per_class_iou"].values())
    markdown = f"""## Segmentation: PVTv2 + semantic FPN on digits-seg

{made['num_train']} train / {made['num_val']} val canvases ({DATA['min_size']}-{DATA['max_size']} px, one or two
scikit-learn digits each; 11 classes: background and the ten digits), model `{MODEL}`
({metrics['parameters'] / 1e6:.2f}M parameters), trained from scratch for {metrics['epochs']} epochs (AdamW,
warmup + cosine, random resize + crop) in {train_time:.0f} s.

| metric | value |
|---|---|
| val mIoU | {miou:.2f}% (target >= {TARGET_MIOU:.0f}%) |
| val pixel accuracy | {metrics['val_pixel_acc']:.2f}% |
| val mean class accuracy | {metrics['val_mean_acc']:.2f}% |

Per-class IoU (%):

| {' | '.join(metrics['val_per_class_iou'])} |
|{'---|' * len(metrics['val_per_class_iou'])}
| {per_class} |

![images, ground truth, predictions]({FIGURE})

Run folder: `{run_dir}`. Try `vistra predict IMAGE --checkpoint {run_dir}` (writes the mask PNG and an overlay).
"""
    return SectionResult("segmentation", f"val mIoU {miou:.2f}%", metrics, f"val mIoU >= {TARGET_MIOU:.0f}%", passed,
                         markdown, [FIGURE])


def _parameter_count(run_dir) -> int:
    from vistra.segmentation.evaluate import load_segmenter

    model, _ = load_segmenter(run_dir)
    return sum(p.numel() for p in model.parameters())


def predictions_figure(run_dir, data_dir, path, count: int = 6, zoom: int = 4) -> None:
    """A PNG with one row per val image: the image, its ground-truth mask and the predicted mask (VOC colours)."""
    from vistra.data.seg_dataset import SegmentationDataset, voc_palette
    from vistra.segmentation.predict import predict_segment

    val = SegmentationDataset(data_dir, "val")
    pairs = val.samples[:count]
    records = predict_segment([image for image, _ in pairs], run_dir, path.parent / "segmentation_predictions",
                              device="cpu")
    palette = np.asarray(voc_palette(), np.uint8).reshape(-1, 3)
    rows = []
    for index, record in enumerate(records):
        image, truth = val.load(index)
        predicted = np.asarray(Image.open(record["mask"]))
        row = [np.asarray(image), palette[truth], palette[predicted]]  # each (H, W, 3)
        rows.append(np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in row], 1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows])
    big = Image.fromarray(grid).resize((grid.shape[1] * zoom, grid.shape[0] * zoom), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    big.save(path)
