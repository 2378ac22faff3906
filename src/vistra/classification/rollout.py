"""Attention rollout (Abnar & Zuidema, 2020): where a ViT's class token looks, as a heat map over the image."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image


def attention_rollout(maps: Sequence[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Per-block attention (B, heads, 1+N, 1+N) -> class-token relevance of each patch (B, N).

    Heads are averaged; each block's map is mixed with the identity for the residual path
    (residual * I + (1 - residual) * A), rows renormalised, and the blocks multiplied from the first up.
    The result is the class token's row of that product without its own entry (so it sums to <= 1).
    """
    if not maps:
        raise ValueError("attention_rollout needs at least one attention map")
    tokens = maps[0].shape[-1]
    eye = torch.eye(tokens, dtype=torch.float32, device=maps[0].device)
    rollout = eye.expand(maps[0].shape[0], tokens, tokens)  # (B, T, T)
    for attn in maps:
        a = residual * eye + (1.0 - residual) * attn.float().mean(dim=1)  # (B, T, T)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout  # (B, T, T)
    return rollout[:, 0, 1:]  # (B, N)


def overlay_heatmap(image: Image.Image, heat: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> Image.Image:
    """RGB image and a (h, w) map -> the image with the map (stretched to [0, 1], resized) blended on top."""
    from matplotlib import colormaps

    heat = np.asarray(heat, dtype=np.float32)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    big = Image.fromarray(np.uint8(np.clip(heat, 0, 1) * 255)).resize(image.size, Image.Resampling.BILINEAR)
    colored = colormaps[cmap](np.asarray(big, dtype=np.float32) / 255.0)[..., :3]  # (H, W, 3) in [0, 1]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * base + alpha * colored
    return Image.fromarray(np.uint8(np.clip(blended, 0, 1) * 255))


def center_crop_view(image: Image.Image, crop_pct: float, size: int) -> Image.Image:
    """The region the eval transform sees (resize shorter side to size/crop_pct, center crop), at `size` px."""
    w, h = image.size
    short = int(size / crop_pct)
    scale = short / min(w, h)
    resized = image.convert("RGB").resize((max(size, round(w * scale)), max(size, round(h * scale))),
                                          Image.Resampling.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))
