"""Tracking with a TransCenter-style model: each frame is encoded once, decoded against the previous frame's
encoding, and its peaks come with the displaced centers (where each object was one frame earlier) that the
Tracker matches to its tracks ("center" cost). `load_center_tracking` rebuilds a trained tracker from a
`vistra train track` checkpoint."""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from vistra.checkpoints import CheckpointError
from vistra.tracking.centernet import decode
from vistra.tracking.transcenter import Encoded


class CenterTracking:
    """A frame-by-frame detector with memory: __call__(image) -> (boxes (N, 4) xyxy image pixels, scores (N,),
    labels (N,) gt class ids, prev_centers (N, 2) image pixels). reset() forgets the previous frame (a new
    sequence starts)."""

    def __init__(self, model: nn.Module, info: Mapping[str, Any], score_threshold: float = 0.05,
                 max_objects: int = 100):
        from vistra.data.det_transforms import build_det_eval_transform

        recipe = info.get("recipe") or {}
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.transform = build_det_eval_transform(recipe.get("eval_size", 608), recipe.get("eval_max_size", 1088))
        self.stride = int(model.config.stride)
        self.score_threshold, self.max_objects = score_threshold, max_objects
        ids = info.get("class_ids")
        # channel -> class id written to the results: the dataset's ids, or MOTChallenge's pedestrian (1)
        self.class_ids = np.asarray(ids if ids else [1 if not info.get("multi_class") else 0], dtype=np.int64)
        self.previous: Encoded | None = None

    def reset(self) -> None:
        self.previous = None

    @torch.no_grad()
    def __call__(self, image: Image.Image):
        pixels, _ = self.transform(image, {"boxes": torch.zeros(0, 4)})  # (3, h, w)
        current = self.model.encode(pixels[None].to(self.device))
        outputs = self.model.decode(current, self.previous if self.previous is not None else current)
        self.previous = current
        (found,) = decode(outputs, self.stride, self.max_objects, self.score_threshold)
        scale = torch.tensor([image.width / pixels.shape[-1], image.height / pixels.shape[-2]])
        boxes = (found["boxes"].cpu().view(-1, 2, 2) * scale).view(-1, 4)
        prev_centers = found["prev_centers"].cpu() * scale
        labels = self.class_ids[found["labels"].cpu().numpy()]
        return boxes.numpy(), found["scores"].cpu().numpy(), labels, prev_centers.numpy()


def load_center_tracking(checkpoint: str | os.PathLike, device: str = "auto", score_threshold: float = 0.05
                         ) -> tuple[CenterTracking, dict[str, Any]]:
    """A `vistra train track` checkpoint -> (CenterTracking, its description). CheckpointError when the file
    holds another task's model or does not fit."""
    import vistra
    from vistra.engine.trainer import resolve_device
    from vistra.trained import read_trained

    state, info, path = read_trained(checkpoint)
    if not info or info.get("task") != "track":
        raise CheckpointError(f"{path}: not a tracking model from `vistra train track`")
    model = vistra.create_model(info["model_name"], **info.get("model_kwargs", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit {info['model_name']} ({err})") from None
    model.to(resolve_device(device))
    return CenterTracking(model, info, score_threshold), info
