"""Box conversions and (generalised) IoU for DETR-style set prediction.

Two layouts are used throughout vistra:
- ``cxcywh``: (center_x, center_y, width, height), what the DETR heads predict (normalised to [0, 1]);
- ``xyxy``: (x0, y0, x1, y1) corners, what IoU, GIoU and COCO evaluation work with.

Every function accepts any number of leading batch dimensions (``...``). The pairwise functions compare every
box of the first set with every box of the second set (``(..., N, 4), (..., M, 4) -> (..., N, M)``); the
``aligned_*`` ones compare box i with box i (``(..., N, 4), (..., N, 4) -> (..., N)``), which is what a loss on
already-matched pairs needs and costs O(N) instead of the O(N^2) of taking the diagonal of a pairwise matrix.
"""
from __future__ import annotations

import torch
from torch import Tensor


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...,) area. Half-precision inputs are computed in float32 so products do not overflow."""
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU and union: (..., N, 4), (..., M, 4) xyxy -> iou (..., N, M), union (..., N, M)."""
    return _iou_and_union(boxes1[..., :, None, :], boxes2[..., None, :, :])


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU (Rezatofighi et al., 2019): (..., N, 4), (..., M, 4) xyxy -> (..., N, M) in [-1, 1].

    Raises ValueError on degenerate boxes (x1 < x0 or y1 < y0, or NaN): they would silently give NaN/inf costs,
    and in DETR training that almost always means the model has diverged or the targets are in the wrong format.
    """
    _check_xyxy(boxes1, "boxes1")
    _check_xyxy(boxes2, "boxes2")
    return _giou(boxes1[..., :, None, :], boxes2[..., None, :, :])


def aligned_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalised IoU of box i with box i: (..., N, 4), (..., N, 4) xyxy -> (..., N). Same checks as pairwise."""
    if boxes1.shape != boxes2.shape:
        raise ValueError("aligned_generalized_box_iou needs equal shapes, "
                         f"got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    _check_xyxy(boxes1, "boxes1")
    _check_xyxy(boxes2, "boxes2")
    return _giou(boxes1, boxes2)


def _giou(b1: Tensor, b2: Tensor) -> Tensor:
    """GIoU of two broadcastable xyxy tensors (..., 4): IoU - (enclosing area - union) / enclosing area."""
    iou, union = _iou_and_union(b1, b2)
    ax0, ay0, ax1, ay1 = _upcast(b1).unbind(-1)
    bx0, by0, bx1, by1 = _upcast(b2).unbind(-1)
    # smallest box enclosing both; valid boxes need no clamp here
    enclosing = (torch.max(ax1, bx1) - torch.min(ax0, bx0)) * (torch.max(ay1, by1) - torch.min(ay0, by0))
    return iou - (enclosing - union) / enclosing


def _iou_and_union(b1: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """IoU and union of two broadcastable xyxy tensors (..., 4) -> (...), (...).

    Works on the four coordinate planes separately: for pairwise inputs ((..., N, 1, 4) vs (..., 1, M, 4)) every
    elementwise op then writes a contiguous (..., N, M) result, several times faster than operating on
    interleaved (..., N, M, 2) corner pairs.
    """
    ax0, ay0, ax1, ay1 = _upcast(b1).unbind(-1)
    bx0, by0, bx1, by1 = _upcast(b2).unbind(-1)
    inter_w = (torch.min(ax1, bx1) - torch.max(ax0, bx0)).clamp(min=0)
    inter_h = (torch.min(ay1, by1) - torch.max(ay0, by0)).clamp(min=0)
    inter = inter_w * inter_h
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union, union


def _check_xyxy(boxes: Tensor, name: str) -> None:
    # `>=` is False for NaN, so NaN boxes are reported here too
    if not (boxes[..., 2:] >= boxes[..., :2]).all():
        bad = ~(boxes[..., 2:] >= boxes[..., :2]).all(-1)
        raise ValueError(
            f"{name}: {int(bad.sum())} degenerate box(es) (x1 < x0, y1 < y0 or NaN), first {boxes[bad][:3].tolist()}; "
            "boxes must be xyxy corners (convert cxcywh with box_cxcywh_to_xyxy) and finite"
        )


def _upcast(t: Tensor) -> Tensor:
    # fp16/bf16 products of pixel coordinates overflow or lose precision; float32/float64 are kept as they are
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()
