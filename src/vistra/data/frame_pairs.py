"""Training samples for trackers that look at two frames (TransCenter): a frame and an earlier one of the same
tracking sequence, both augmented with the SAME random flip / resize / crop, so the motion between them is
the objects' motion and not the augmentation's."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from vistra.data.cls_transforms import IMAGENET_MEAN, IMAGENET_STD
from vistra.data.det_transforms import PER_BOX_KEYS, DetectionTransform, ShortestSideResize, build_det_train_transform
from vistra.data.errors import DataError
from vistra.data.image_io import read_image

PER_BOX = ("labels", "track_ids", "visibility")


class PairTransform:
    """(image_a, target_a, image_b, target_b) -> the same, each as DetectionTransform returns it, after ONE draw
    of the random geometric transform applied to both frames. Targets hold "boxes" (n, 4) absolute xyxy plus
    per-box "labels", "track_ids", "visibility", which stay aligned with the boxes (boxes cropped away are
    dropped with their entries, and counted in ``dropped``, per process). Optional "ignore_boxes" (k, 4) xyxy
    regions move with the image and come out clipped, in pixels of the transformed image."""

    def __init__(self, geometric: v2.Transform | None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD):
        self.geometric = geometric
        self.finish = DetectionTransform(None, mean, std, per_box_keys=(*PER_BOX_KEYS, *PER_BOX))
        self.dropped = 0

    def __call__(self, image_a, target_a: dict, image_b, target_b: dict):
        if image_a.size != image_b.size:
            raise ValueError(f"frame pair of different sizes {image_a.size} and {image_b.size}")
        pair = [self._wrap(image_a, target_a), self._wrap(image_b, target_b)]
        if self.geometric is not None:
            pair = self.geometric(pair)  # one set of random parameters for everything in the call
        (pa, ta), (pb, tb) = (self._drop_empty(image, target) for image, target in pair)
        return (*self.finish(pa, ta), *self.finish(pb, tb))

    @staticmethod
    def _wrap(image, target: dict) -> tuple[tv_tensors.Image, dict]:
        pixels = tv_tensors.Image(TF.pil_to_tensor(image))  # (3, H, W) uint8
        boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
        wrapped = {k: torch.as_tensor(v) for k, v in target.items() if k != "boxes"}
        wrapped["boxes"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=tuple(pixels.shape[-2:]))
        if "ignore_boxes" in target:
            ignored = torch.as_tensor(target["ignore_boxes"], dtype=torch.float32).reshape(-1, 4)
            wrapped["ignore_boxes"] = tv_tensors.BoundingBoxes(ignored, format="XYXY",
                                                               canvas_size=tuple(pixels.shape[-2:]))
        return pixels, wrapped

    def _drop_empty(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        """Clip boxes to the image; drop (and count) boxes, with their per-box entries, left with no area."""
        boxes = TF.clamp_bounding_boxes(target["boxes"])  # (n, 4) xyxy
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (n,)
        self.dropped += int((~keep).sum())
        target = {k: (v[keep] if k in PER_BOX else v) for k, v in target.items()}
        target["boxes"] = boxes.as_subclass(torch.Tensor)[keep]
        if "ignore_boxes" in target:
            ignored = TF.clamp_bounding_boxes(target["ignore_boxes"]).as_subclass(torch.Tensor)  # (k, 4) xyxy
            target["ignore_boxes"] = ignored[(ignored[:, 2] > ignored[:, 0]) & (ignored[:, 3] > ignored[:, 1])]
        return image, target


def build_pair_transform(train: bool = True, scales: Sequence[int] = (480, 512, 544, 576, 608),
                         max_size: int | None = 1088, crop_resize: Sequence[int] | None = None,
                         crop_size: Sequence[int] = (384, 600), hflip: float = 0.5, eval_size: int = 608
                         ) -> PairTransform:
    """Detection's DETR-style augmentation (see det_transforms) drawn once per pair; eval: a fixed resize."""
    if train:
        return PairTransform(build_det_train_transform(scales, max_size, crop_resize, crop_size, hflip).geometric)
    return PairTransform(ShortestSideResize([eval_size], max_size=max_size))


class FramePairDataset(Dataset):
    """(previous frame, its target, frame, its target) samples from tracking sequences.

    Every frame t with a gt row and an earlier frame is a sample; its partner is frame t - g with g drawn
    uniformly from 1..max_gap (clipped at the first frame) on each access. Targets: "boxes" (n, 4) xyxy ->
    normalised cxcywh after the transform, "labels" (n,) classes, "track_ids" (n,) (the same object has the
    same id in both frames), "visibility" (n,), "ignore_boxes" (k, 4) pixel xyxy of the frame's ignored regions
    (KITTI DontCare, UA-DETRAC ignored; none for MOTChallenge folders), plus DetectionTransform's "size" /
    "orig_size" / "area".
    sequences: MOTChallenge sequence folders (vistra.tracking.mot_io.find_sequences) or TrackingSequence objects
    of any format (vistra.tracking.datasets.open_sequences); gt_filter: which gt rows count (e.g.
    mot_io.MOT17_PEDESTRIANS with min_visibility); label_map: class id -> training label (None: keep).
    """

    def __init__(self, sequences: Sequence[Any], transform: PairTransform | None = None,
                 max_gap: int = 1, gt_filter: Any = None, label_map: dict[int, int] | None = None,
                 skip_bad: bool = False):
        from vistra.tracking.mot_io import filter_gt, read_gt, read_seqinfo

        if max_gap < 1:
            raise ValueError(f"max_gap must be >= 1, got {max_gap}")
        self.transform = transform or build_pair_transform(train=False)
        self.max_gap, self.label_map = max_gap, label_map
        self.sequences = []  # (name, {frame: image file}, gt MotTable, frame -> (k, 4) ltwh ignored regions)
        self.samples = []  # (sequence index, frame)
        self.skipped: list[str] = []
        for item in sequences:
            if isinstance(item, (str, os.PathLike)):
                info, gt = read_seqinfo(item), read_gt(item, gt_filter, skip_bad=skip_bad)
                self.skipped += [f"{item}/gt/gt.txt: {s}" for s in gt.skipped]
                name, frames = str(item), {f: info.frame_path(item, f) for f in range(1, info.length + 1)}
                ignored = _no_regions
            else:
                gt = filter_gt(item.gt, gt_filter) if gt_filter is not None else item.gt
                self.skipped += item.skipped
                name, frames = str(item.folder or item.source), item.frames
                ignored = item.ignore_regions
            if label_map is not None and not hasattr(label_map, "__missing__"):
                unknown = sorted({int(c) for c in np.unique(gt.classes)} - set(label_map))
                if unknown:
                    raise DataError(name, f"ground truth of class id(s) {unknown}, which are not among the tracked "
                                          f"classes {sorted(label_map)}")
            k = len(self.sequences)
            self.sequences.append((name, frames, gt, ignored))
            self.samples += [(k, int(t)) for t in np.unique(gt.frames) if t > 1]
        if not self.samples:
            raise DataError(self.sequences[0][0] if sequences else "frame pairs", "no frame with ground truth "
                                                                                  "after the first frame")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        k, frame = self.samples[index]
        gap = int(torch.randint(1, self.max_gap + 1, ()))
        previous = max(1, frame - gap)
        prev_image, prev_target = self._frame(k, previous)
        image, target = self._frame(k, frame)
        return self.transform(prev_image, prev_target, image, target)

    def _frame(self, k: int, frame: int):
        name, frames, gt, ignored = self.sequences[k]
        if frame not in frames:
            raise DataError(name, f"no image for frame {frame} of this sequence")
        rows = gt.at_frame(frame)
        labels = rows.classes if self.label_map is None else np.array([self.label_map[c] for c in rows.classes])
        target = {"boxes": torch.from_numpy(rows.xyxy()).float(), "labels": torch.from_numpy(labels.astype(np.int64)),
                  "track_ids": torch.from_numpy(rows.ids), "visibility": torch.from_numpy(rows.visibility).float(),
                  "image_id": torch.tensor(frame)}
        regions = np.asarray(ignored(frame), dtype=np.float64).reshape(-1, 4)  # (k, 4) left, top, width, height
        target["ignore_boxes"] = torch.from_numpy(np.concatenate([regions[:, :2], regions[:, :2] + regions[:, 2:]],
                                                                 axis=1)).float()  # (k, 4) xyxy
        return read_image(frames[frame]), target


def _no_regions(frame: int) -> np.ndarray:
    return np.zeros((0, 4))
