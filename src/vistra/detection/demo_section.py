"""The detection section of `vistra demo`: a small DETR trained from scratch on built-in digits-det data.

Not listed in vistra.demo.SECTIONS yet: with this recipe, 500 steps (the demo's time budget on a CPU) leave the
DETR at chance level (val AP50 at most 0.3%; its classification had not started), so the section would fail its
target. It runs on its own with `detection_section(DemoContext(out))`.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from vistra.demo import DemoContext, SectionResult

# Smaller canvases with fewer, larger digits than `vistra data make digits-det`'s defaults, so that a DETR learns
# them from scratch within the demo's budget (about three minutes on one CPU thread).
DEMO_DATA: dict[str, Any] = {"n_train": 400, "n_val": 80, "canvas": (64, 96), "digit_size": (20, 40),
                             "max_digits": 2}
# DETR on a ResNet-18 (dilated last stage: stride 16) with trainable BatchNorm (no ImageNet weights here, so
# frozen statistics would be meaningless), a 1 + 2 layer transformer of width 128 and 6 queries, at the images'
# own scale; 10 epochs = 500 steps of 8 images, lr / 10 for the last two.
DEMO_SETTINGS: dict[str, Any] = {
    "model.backbone": "resnet18", "model.dilation": True, "model.backbone_kwargs": {"norm_layer": "batch"},
    "model.hidden_dim": 128, "model.nheads": 4, "model.enc_layers": 1, "model.dec_layers": 2,
    "model.dim_feedforward": 256, "model.num_queries": 6, "model.dropout": 0.0,
    "scales": [64, 80], "max_size": 128, "crop_resize": None, "hflip": 0.0, "eval_size": 80, "eval_max_size": 128,
    "lr": 6e-4, "lr_backbone": 6e-4, "batch_size": 8, "epochs": 10, "lr_drop_epochs": [8], "warmup_epochs": 0.3,
    "eval_every": 2,
}
TARGET_AP50 = 0.30  # val AP at IoU 0.5 the section must reach (chance is about 0)
FIGURES = ("det_curves.png", "det_predictions.png")
SHOWN = 6  # val images drawn with their detections


def detection_section(ctx: DemoContext) -> SectionResult:
    """Digits-det: train a small DETR, score COCO AP on val with pycocotools, draw detections."""
    from vistra.data.digits_det import make_digits_det
    from vistra.detection.eval_predict import load_detector
    from vistra.detection.recipe import train_detect

    start = time.perf_counter()
    data_dir = ctx.data / "digits-det"
    made = make_digits_det(data_dir, **DEMO_DATA)
    print(f"[detection] wrote {made['num_train']} train / {made['num_val']} val canvases "
          f"({made['boxes_train']} / {made['boxes_val']} digits) to {data_dir}")

    settings = {**DEMO_SETTINGS, **({"epochs": ctx.epochs} if ctx.epochs else {})}
    run_dir = ctx.runs / "detect"
    train_start = time.perf_counter()
    result = train_detect("detr", data_dir, run_dir, settings)
    train_time = time.perf_counter() - train_start
    stats = result["metrics"]

    model, info = load_detector(result["model_path"])
    shutil.copyfile(run_dir / "curves.png", ctx.report / FIGURES[0])
    predictions_figure(model, info, data_dir / "val", ctx.report / FIGURES[1])

    metrics = {
        "model": "detr (resnet18-DC5, 1+2 layers, d 128, 6 queries)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": len(result["history"]),
        "best_epoch": int(stats["epoch"]),
        **{f"val_{k}": round(100 * stats[k], 2) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")},
        "num_train": made["num_train"],
        "num_val": made["num_val"],
        "train_time_s": round(train_time, 1),
        "time_s": round(time.perf_counter() - start, 1),
        "run_dir": str(run_dir),
    }
    passed = None if ctx.epochs else stats["AP50"] >= TARGET_AP50
    headline = f"val AP {100 * stats['AP']:.1f}, AP50 {100 * stats['AP50']:.1f}"
    return SectionResult("detection", headline, metrics, f"val AP50 >= {100 * TARGET_AP50:.0f}", passed,
                         _markdown(made, metrics, train_time, result["model_path"], data_dir), list(FIGURES))


def predictions_figure(model, info: dict[str, Any], val_dir: Path, path: Path, threshold: float = 0.5) -> Path:
    """The first SHOWN val images side by side with their detections above `threshold` drawn on them."""
    import torch
    from PIL import Image

    from vistra.data.det_transforms import build_det_eval_transform
    from vistra.data.image_io import read_image
    from vistra.detection.recipe import postprocess_for
    from vistra.detection.render import draw_detections

    recipe = info["recipe"]
    transform = build_det_eval_transform(recipe["eval_size"], recipe["eval_max_size"])
    post = postprocess_for(model)
    tiles = []
    for file in sorted(val_dir.glob("*.png"))[:SHOWN]:
        picture = read_image(file)
        pixels, _ = transform(picture, {"boxes": torch.zeros(0, 4)})  # (3, h, w)
        with torch.no_grad():
            found = post(model(pixels[None]), [(picture.height, picture.width)], threshold=threshold)[0]
        tiles.append(draw_detections(picture.resize((picture.width * 2, picture.height * 2)), found["boxes"] * 2,
                                     found["labels"], found["scores"], info["classes"]))
    sheet = Image.new("RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), max(t.height for t in tiles)),
                      (255, 255, 255))
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + 8
    sheet.save(path)
    return path


def _markdown(made: dict[str, Any], m: dict[str, Any], train_time: float, model_path: str, data_dir: Path) -> str:
    d = DEMO_DATA
    verdict = "Chance level is an AP of about 0."
    if m["val_AP"] < 30:
        verdict = ("This is low: a tiny DETR trained from scratch for a few minutes on a CPU, while the paper trains "
                   "for 150 to 500 epochs from ImageNet weights, and DETR is known to converge slowly. "
                   + verdict + " An AP50 well above the AP75 means digits found and read more often than boxed "
                   "tightly." * (m["val_AP50"] > 2 * m["val_AP75"]))
    return f"""## Detection: DETR on digits scattered on canvases

{made['num_train']} train / {made['num_val']} val canvases of {d['canvas'][0]}..{d['canvas'][1]} pixels a side, each with \
1..{d['max_digits']} handwritten digits ({d['digit_size'][0]}..{d['digit_size'][1]} pixels, random colours, some overlapping) \
in COCO json, made by `vistra data make digits-det`.
Model: {m['model']} ({m['parameters'] / 1e6:.2f}M parameters), trained from scratch for {m['epochs']} epochs
(AdamW, Hungarian matching, CE + L1 + GIoU with auxiliary decoder losses, gradient clipping 0.1) in
{train_time:.0f} s; the weights of epoch {m['best_epoch']} (best val AP) are kept. COCO metrics from pycocotools on
the {m['num_val']} val images:

| AP | AP50 | AP75 | APs | APm | APl | AR@100 |
|---|---|---|---|---|---|---|
| {m['val_AP']:.1f} | {m['val_AP50']:.1f} | {m['val_AP75']:.1f} | {m['val_APs']:.1f} | {m['val_APm']:.1f} | {m['val_APl']:.1f} | {m['val_AR100']:.1f} |

{verdict}

![detection training curves](det_curves.png)

![detections on val images (score > 0.5)](det_predictions.png)

Run folder: `{m['run_dir']}`. Try `vistra predict IMAGE --checkpoint {model_path}` or
`vistra eval detect --checkpoint {model_path} --data {data_dir}`.
"""
