"""Draw detections (boxes, class names, scores) on an image."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

# 20 well-separated colours (Tableau 20 reordered so neighbouring class ids differ strongly).
_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120),
    (152, 223, 138), (255, 152, 150), (197, 176, 213), (196, 156, 148), (247, 182, 210), (199, 199, 199),
    (219, 219, 141), (158, 218, 229),
)


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour boxes of class `label` are drawn in (the same in every image)."""
    return _PALETTE[int(label) % len(_PALETTE)]


def draw_detections(image: Image.Image, boxes, labels, scores=None,
                    class_names: Sequence[str] | Mapping[int, str] | None = None) -> Image.Image:
    """A copy of `image` (RGB) with every box outlined in its class colour and tagged "name score".

    boxes: (K, 4) absolute xyxy pixels (tensor, array or lists); labels: (K,) class ids; scores: (K,) or None.
    class_names: list indexed by id or {id: name}; ids without a name are shown as numbers. Line width and
    text size follow the image size, so tags stay readable on small and large images; the tag sits above the
    box (inside it when there is no room) on a filled background in the box colour.
    """
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    short = min(canvas.size)
    line = max(1, round(short / 250))
    font = _font(max(9, min(28, round(short / 28))))
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).tolist()
    labels = torch.as_tensor(labels).reshape(-1).tolist()
    scores = [None] * len(labels) if scores is None else torch.as_tensor(scores).reshape(-1).tolist()
    for (x0, y0, x1, y1), label, score in zip(boxes, labels, scores):
        colour = class_colour(label)
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=line)
        text = _name(class_names, label) + ("" if score is None else f" {score:.2f}")
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 2 * line, bottom - top + 2 * line
        ty = y0 - th if y0 - th >= 0 else y0  # above the box, or inside it at the top edge
        tx = min(max(x0, 0), max(canvas.width - tw, 0))
        draw.rectangle([tx, ty, tx + tw, ty + th], fill=colour)
        draw.text((tx + line - left, ty + line - top), text, font=font, fill=_ink_for(colour))
    return canvas


def save_detections(path: str | os.PathLike, image: Image.Image, boxes, labels, scores=None,
                    class_names: Sequence[str] | Mapping[int, str] | None = None) -> None:
    """draw_detections(...) written as a PNG to `path`."""
    draw_detections(image, boxes, labels, scores, class_names).save(path, format="PNG")


def _name(class_names, label: int) -> str:
    if isinstance(class_names, Mapping):
        return str(class_names.get(label, label))
    if class_names is not None and 0 <= label < len(class_names):
        return str(class_names[label])
    return str(label)


def _ink_for(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white, whichever reads better on `colour` (by perceived brightness)."""
    r, g, b = colour
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # scalable (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()
