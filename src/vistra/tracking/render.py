"""Draw tracks on a frame: each ID in its own colour, tagged "ID class", with a short trail of past centers."""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vistra.detection.render import class_colour, draw_detections

from .tracker import TrackOutput


class TrailRenderer:
    """Keeps the last `trail` centers of every track and draws frames; call in frame order."""

    def __init__(self, class_names: Mapping[int, str] | None = None, trail: int = 20):
        self.class_names = dict(class_names or {})
        self.trail = trail
        self.history: dict[int, deque] = {}

    def draw(self, image: Image.Image, tracks: Sequence[TrackOutput]) -> Image.Image:
        """A copy of `image` with the boxes, tags and trails of `tracks` (the tracks of this frame)."""
        for t in tracks:
            center = ((t.box[0] + t.box[2]) / 2, (t.box[1] + t.box[3]) / 2)
            self.history.setdefault(t.track_id, deque(maxlen=max(self.trail, 1))).append(center)
        tags = {t.track_id: f"{t.track_id} {self.class_names.get(t.label, t.label)}" for t in tracks}
        boxes = np.array([t.box for t in tracks], dtype=np.float32).reshape(-1, 4)  # (K, 4) xyxy
        canvas = draw_detections(image, boxes, [t.track_id for t in tracks], None, tags)
        if self.trail > 1:
            draw = ImageDraw.Draw(canvas)
            width = max(1, round(min(canvas.size) / 200))
            for t in tracks:
                points = list(self.history[t.track_id])
                if len(points) > 1:
                    draw.line(points, fill=class_colour(t.track_id), width=width)
        return canvas
