"""Figures for a classification report: a grid of predictions and a strip of attention-rollout overlays."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vistra.classification.model_file import ClassifierInfo
from vistra.classification.predict import classify_image
from vistra.classification.rollout import center_crop_view, overlay_heatmap


@torch.no_grad()
def predict_folder(model, info: ClassifierInfo, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                   progress: bool = True) -> list[dict]:
    """Classify (path, label) samples -> [{"image", "true", "pred", "probability"}] with class names."""
    from vistra.data.image_io import read_image

    transform = info.build_eval_transform()
    rows = []
    for path, label in tqdm(samples, desc="predict val", unit="img", disable=not progress, leave=False):
        x = transform(read_image(path)).unsqueeze(0)  # (1, 3, S, S)
        probs = model(x).float().softmax(dim=-1)[0]  # (K,)
        p, index = probs.max(dim=0)
        rows.append({"image": path, "true": classes[label], "pred": info.classes[int(index)],
                     "probability": float(p)})
    return rows


def pick_examples(rows: Sequence[dict], count: int) -> list[dict]:
    """Up to `count` rows: every mistake first, then correct ones spread over the classes."""
    wrong = [r for r in rows if r["pred"] != r["true"]]
    right = [r for r in rows if r["pred"] == r["true"]]
    by_class: dict[str, list[dict]] = {}
    for r in right:
        by_class.setdefault(r["true"], []).append(r)
    spread = [r for group in zip(*by_class.values()) for r in group] if by_class else []
    rest = [r for r in right if r not in spread]
    return (wrong + spread + rest)[:count]


def predictions_grid(rows: Sequence[dict], path: str | os.PathLike, cols: int = 8, count: int = 32) -> Path:
    """Save a grid of images titled "pred / true" (mistakes in red) to a PNG; returns its path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from PIL import Image

    chosen = pick_examples(rows, count)
    rows_n = max(1, -(-len(chosen) // cols))
    figure = Figure(figsize=(1.3 * cols, 1.5 * rows_n), layout="constrained")
    FigureCanvasAgg(figure)
    axes = np.atleast_1d(figure.subplots(rows_n, cols, squeeze=False).ravel())
    for ax in axes:
        ax.set_axis_off()
    for ax, r in zip(axes, chosen):
        with Image.open(r["image"]) as image:
            ax.imshow(np.asarray(image.convert("RGB")))
        ok = r["pred"] == r["true"]
        ax.set_title(f"{r['pred']} / {r['true']}", fontsize=9, color="black" if ok else "red")
    wrong = sum(r["pred"] != r["true"] for r in rows)
    figure.suptitle(f"predicted / true ({wrong} of {len(rows)} val images wrong; mistakes in red)", fontsize=10)
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path


def attention_grid(model, info: ClassifierInfo, images: Sequence[str], path: str | os.PathLike) -> Path:
    """Save, for each image, the model's view above its attention-rollout overlay (ViT models) to a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from vistra.data.image_io import read_image

    figure = Figure(figsize=(1.8 * len(images), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, len(images), squeeze=False)
    for i, image_path in enumerate(images):
        image = read_image(image_path)
        top, heat = classify_image(model, info, image)
        view = center_crop_view(image, info.crop_pct, max(128, info.img_size))
        axes[0, i].imshow(np.asarray(view))
        axes[0, i].set_title(f"{top[0]['class']} ({top[0]['probability']:.0%})", fontsize=9)
        if heat is not None:
            axes[1, i].imshow(np.asarray(overlay_heatmap(view, heat)))
        for ax in axes[:, i]:
            ax.set_axis_off()
    figure.suptitle("attention rollout: where the class token looks (red = most)", fontsize=10)
    path = Path(path)
    figure.savefig(path, dpi=100)
    return path
