"""Draw a predicted index mask over its image."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def overlay(image: Image.Image, mask: np.ndarray, palette: Sequence[int], alpha: float = 0.5,
            background: int | None = None) -> Image.Image:
    """RGB image with each pixel's class colour (palette = flat [r, g, b, ...]) blended in at `alpha`.

    image: PIL image of size (W, H); mask: (H, W) class indices. Pixels of class `background` (if given) keep
    the image's own colour.
    """
    colours = np.asarray(palette, dtype=np.float32).reshape(-1, 3)  # (P, 3)
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    painted = colours[mask]  # (H, W, 3)
    blend = alpha if background is None else np.where(mask == background, 0.0, alpha)[..., None]
    return Image.fromarray((pixels * (1 - blend) + painted * blend).round().clip(0, 255).astype(np.uint8))
