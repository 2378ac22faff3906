"""COCO box AP of any DETR-style detector, computed by pycocotools' COCOeval.

The model is run over a dataset (or a DataLoader of ``collate_detection`` batches); its outputs
("pred_logits", "pred_boxes" normalised cxcywh) go through a post-processing function that returns boxes in
the pixels of each image's *original* size (``orig_size`` of the target), which are written in the COCO
results format ({"image_id", "category_id", "bbox": [x, y, w, h], "score"}) and scored against the ground truth:
the dataset's own pycocotools object when it has one (CocoDetection.coco, crowd regions included), otherwise
a ground truth rebuilt from the targets' boxes and orig_size.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vistra.atomic_io import write_json_atomic
from vistra.data.batching import collate_detection

from .box_ops import box_cxcywh_to_xyxy
from .postprocess import postprocess

# The 12 numbers of COCOeval.summarize(), in its order: AP at IoU .50:.95, .50, .75, for small / medium / large
# objects, then AR with 1 / 10 / 100 detections per image and AR for small / medium / large objects.
COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
PostprocessFn = Callable[[dict, torch.Tensor], list[dict[str, torch.Tensor]]]


@torch.no_grad()
def predict_coco(model: nn.Module, data: Dataset | DataLoader, postprocess_fn: PostprocessFn | None = None, *,
                 batch_size: int = 2, device: str | torch.device | None = None, progress: bool = True,
                 keep_targets: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run `model` over `data` -> (COCO-format results, targets seen).

    data: a dataset of (image (3, H, W), target) pairs, batched here with collate_detection, or a DataLoader
        yielding (images (B, 3, H, W), mask (B, H, W), targets). Targets need "image_id" and "orig_size" (or
        "size") as (height, width).
    postprocess_fn: (outputs, target_sizes (B, 2)) -> list of {"scores", "labels", "boxes" absolute xyxy};
        default vistra.detection.postprocess (DETR softmax); pass partial(postprocess, focal=True) for
        Deformable DETR.
    The model runs in eval mode (its mode is restored after). targets are returned (moved to the CPU) only
    when keep_targets, else an empty list.
    """
    postprocess_fn = postprocess_fn or postprocess
    device = torch.device(device) if device is not None else _model_device(model)
    loader = data if isinstance(data, DataLoader) else DataLoader(
        data, batch_size=batch_size, shuffle=False, collate_fn=collate_detection)
    results: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc="eval", disable=not progress, dynamic_ncols=True, leave=False):
            images, mask, targets = _unpack(batch)
            outputs = model(images.to(device), mask.to(device))
            sizes = torch.stack([torch.as_tensor(t.get("orig_size", t.get("size"))) for t in targets])  # (B, 2)
            for target, found in zip(targets, postprocess_fn(outputs, sizes.to(device))):
                results += _to_coco_results(_image_id(target), found)
            if keep_targets:
                seen += [{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]
            else:
                seen += [{"image_id": _image_id(t)} for t in targets]
    finally:
        model.train(was_training)
    return results, seen


def evaluate_coco(model: nn.Module, data: Dataset | DataLoader, postprocess_fn: PostprocessFn | None = None, *,
                  coco_gt: Any = None, batch_size: int = 2, device: str | torch.device | None = None,
                  progress: bool = True, results_path: str | os.PathLike | None = None,
                  verbose: bool = False) -> dict[str, float]:
    """COCO box metrics of `model` on `data` -> {"AP", "AP50", ..., "ARl"} (the 12 COCO_STATS, fractions).

    Only the images in `data` are scored. Ground truth: `coco_gt` (a pycocotools COCO) if given, else the
    dataset's `.coco` (found through Subset and DataLoader wrappers), else rebuilt from the targets. As in
    COCOeval, a metric with no ground truth box in its size range is -1. results_path: also write the
    detections there (write_coco_results). verbose: print COCOeval's summary table to stderr.
    See predict_coco for data and postprocess_fn.
    """
    coco_gt = coco_gt if coco_gt is not None else _find_coco(data)
    results, seen = predict_coco(model, data, postprocess_fn, batch_size=batch_size, device=device,
                                 progress=progress, keep_targets=coco_gt is None)
    if results_path is not None:
        write_coco_results(results, results_path)
    if coco_gt is None:
        coco_gt = coco_from_targets(seen)
    return coco_stats(coco_gt, results, [t["image_id"] for t in seen], verbose=verbose)


def coco_stats(coco_gt: Any, results: list[dict[str, Any]], image_ids: Iterable[int] | None = None,
               verbose: bool = False) -> dict[str, float]:
    """Run COCOeval (iouType "bbox") of `results` against `coco_gt` on `image_ids` (default: all) -> 12 stats."""
    from pycocotools.cocoeval import COCOeval

    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # pycocotools prints its progress
        detections = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        evaluator = COCOeval(coco_gt, detections, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(set(image_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print("\n".join(line for line in log.getvalue().splitlines() if "Average" in line), file=sys.stderr)
    return {name: float(value) for name, value in zip(COCO_STATS, evaluator.stats)}


def write_coco_results(results: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write COCO-format detections (a JSON list, what COCO.loadRes and the COCO server take) to `path`."""
    return write_json_atomic(path, results, indent=None)


def coco_from_targets(targets: Iterable[dict[str, Any]]) -> Any:
    """A pycocotools COCO ground truth from transformed targets: "boxes" normalised cxcywh, "labels",
    "image_id", "orig_size" (or "size") and optional "iscrowd"; boxes are scaled to orig_size."""
    from pycocotools.coco import COCO

    images, annotations, categories = [], [], set()
    for target in targets:
        height, width = (int(v) for v in torch.as_tensor(target.get("orig_size", target.get("size"))))
        image_id = _image_id(target)
        images.append({"id": image_id, "width": width, "height": height})
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        boxes = box_cxcywh_to_xyxy(torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)) * scale
        crowd = target.get("iscrowd", torch.zeros(len(boxes), dtype=torch.int64))
        for box, label, is_crowd in zip(boxes.tolist(), torch.as_tensor(target["labels"]).tolist(),
                                        torch.as_tensor(crowd).tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": int(is_crowd)})
            categories.add(int(label))
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": c, "name": str(c)} for c in sorted(categories)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def focal_postprocess(top_k: int = 100) -> PostprocessFn:
    """The post-processing of sigmoid (focal) heads, e.g. Deformable DETR: postprocess(focal=True, top_k)."""
    return partial(postprocess, focal=True, top_k=top_k)


# ------------------------------------------------------------------------------------------- helpers
def _to_coco_results(image_id: int, found: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    boxes = found["boxes"].float().cpu()  # (K, 4) xyxy pixels
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    return [{"image_id": image_id, "category_id": int(label), "bbox": [round(v, 3) for v in box],
             "score": round(float(score), 5)}
            for box, label, score in zip(xywh, found["labels"].tolist(), found["scores"].tolist())]


def _unpack(batch: Any) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]:
    if not (isinstance(batch, (tuple, list)) and len(batch) == 3):
        raise TypeError("evaluate_coco: a DataLoader must yield (images, mask, targets) batches; build it with "
                        "collate_fn=vistra.data.batching.collate_detection")
    return batch[0], batch[1], list(batch[2])


def _image_id(target: dict[str, Any]) -> int:
    if "image_id" not in target:
        raise KeyError("evaluate_coco: every target needs an 'image_id' (CocoDetection targets have one)")
    return int(torch.as_tensor(target["image_id"]).reshape(-1)[0])


def _find_coco(data: Any) -> Any:
    """The pycocotools ground truth behind a dataset, DataLoader or (nested) Subset, or None."""
    while data is not None:
        if hasattr(data, "coco"):
            return data.coco
        data = data.dataset if isinstance(data, (DataLoader, Subset)) else None
    return None


def _empty_results(coco_gt: Any) -> Any:
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset.get("images", [])),
                     "categories": list(coco_gt.dataset.get("categories", [])), "annotations": []}
    empty.createIndex()
    return empty


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")
