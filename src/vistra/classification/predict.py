"""Classify image files with a trained classifier: top-5 JSON, and an attention-rollout overlay for ViTs."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from vistra.atomic_io import write_json_atomic
from vistra.classification.model_file import ClassifierInfo, load_classifier
from vistra.classification.rollout import attention_rollout, center_crop_view, overlay_heatmap

PREDICTIONS = "predictions.json"


@torch.no_grad()
def classify_image(model, info: ClassifierInfo, image: Image.Image, topk: int = 5) -> tuple[list[dict], Any]:
    """One RGB image -> (top-k [{"class", "index", "probability"}], ViT attention rollout (h, w) or None)."""
    x = info.build_eval_transform()(image).unsqueeze(0)  # (1, 3, S, S)
    heat = None
    if hasattr(model, "forward_with_attention"):
        logits, maps = model.forward_with_attention(x)  # (1, K), [(1, heads, 1+N, 1+N)]
        p = model.patch_size
        heat = attention_rollout(maps)[0].reshape(x.shape[-2] // p, x.shape[-1] // p).numpy()  # (h, w)
    else:
        logits = model(x)  # (1, K)
    probs = logits.float().softmax(dim=-1)[0]  # (K,)
    values, indices = probs.topk(min(topk, probs.shape[0]))
    top = [{"class": info.classes[i] if i < len(info.classes) else str(i), "index": int(i), "probability": float(v)}
           for v, i in zip(values.tolist(), indices.tolist())]
    return top, heat


def render_overlay(image: Image.Image, heat, info: ClassifierInfo, top: list[dict], path: Path) -> Path:
    """Save [the model's view of the image | attention overlay] side by side, titled with the top class."""
    from PIL import ImageDraw

    size = max(256, info.img_size)
    view = center_crop_view(image, info.crop_pct, size)
    canvas = Image.new("RGB", (2 * size, size + 24), "white")
    canvas.paste(view, (0, 24))
    canvas.paste(overlay_heatmap(view, heat), (size, 24))
    best = top[0]
    title = f"{best['class']} ({best['probability']:.1%})  |  attention rollout"
    ImageDraw.Draw(canvas).text((6, 6), title, fill="black")
    canvas.save(path)
    return path


def predict(
    images: Sequence[str | os.PathLike],
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike = "runs/predict",
    model_name: str | None = None,
    topk: int = 5,
    overlays: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Top-k classes of every image, written to out_dir/predictions.json (returned too); ViT overlays as PNGs.

    Result: {"checkpoint", "model", "predictions": [{"image", "top5": [{"class", "index", "probability"}],
    "attention_overlay": PNG path or None}]}. Unreadable images raise DataError naming the file.
    """
    from vistra.data.image_io import read_image

    model, info = load_classifier(checkpoint, model_name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results, used_names = [], set()
    for path in tqdm(list(images), desc="predict", unit="img", disable=not progress or len(images) < 2):
        image = read_image(path)
        top, heat = classify_image(model, info, image, topk)
        overlay = None
        if overlays and heat is not None:
            name = _unique(Path(path).stem, used_names)
            overlay = str(render_overlay(image, heat, info, top, out / f"{name}_attention.png"))
        results.append({"image": str(path), "top5": top, "attention_overlay": overlay})
    report = {"checkpoint": str(checkpoint), "model": info.model_name, "predictions": results}
    write_json_atomic(out / PREDICTIONS, report)
    return report


def _unique(stem: str, used: set[str]) -> str:
    name, n = stem, 1
    while name in used:
        n += 1
        name = f"{stem}_{n}"
    used.add(name)
    return name
