"""Turn DETR / Deformable DETR outputs into scored, labelled boxes in pixels (the official ``PostProcess``)."""
from __future__ import annotations

import torch
from torch import Tensor

from .box_ops import box_cxcywh_to_xyxy


@torch.no_grad()
def postprocess(outputs: dict, target_sizes, focal: bool = False, top_k: int = 100,
                threshold: float | None = None) -> list[dict[str, Tensor]]:
    """Detections per image.

    Args:
        outputs: dict with "pred_logits" (B, Q, C) and "pred_boxes" (B, Q, 4) normalised cxcywh.
        target_sizes: (B, 2) tensor or list of B (height, width) pairs: the size, in pixels, the boxes are
            scaled to (the original image size for COCO evaluation, the resized unpadded size for drawing).
        focal: False for DETR (softmax over C = classes + no-object: every query keeps its best real class, Q
            detections); True for Deformable DETR (sigmoid: the top_k best (query, class) pairs over all Q x C,
            so one query may give several detections of different classes).
        top_k: number of detections per image when focal (clipped to Q x C); ignored for DETR.
        threshold: if given, keep only detections whose score is strictly above it.

    Returns:
        list of B dicts: "scores" (K,) float, "labels" (K,) int64, "boxes" (K, 4) absolute xyxy, sorted by
        score (focal) or in query order (DETR).
    """
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]  # (B, Q, C), (B, Q, 4)
    B, Q, C = logits.shape
    sizes = torch.as_tensor(target_sizes, dtype=torch.float32, device=boxes.device)  # (B, 2) = (h, w)
    if sizes.shape != (B, 2):
        raise ValueError(f"postprocess: target_sizes must be (batch={B}, 2) as (height, width), "
                         f"got {tuple(sizes.shape)}")
    h, w = sizes.unbind(1)
    scale = torch.stack([w, h, w, h], dim=1)[:, None, :]  # (B, 1, 4)
    boxes = box_cxcywh_to_xyxy(boxes.float()) * scale  # (B, Q, 4) pixels

    if focal:
        prob = logits.float().sigmoid().flatten(1)  # (B, Q*C), index = query * C + class
        scores, flat = prob.topk(min(top_k, Q * C), dim=1)  # (B, K)
        labels = flat % C
        boxes = boxes.gather(1, (flat // C)[..., None].expand(-1, -1, 4))  # (B, K, 4)
    else:
        # the last column is "no object": a query's detection is its best real class
        scores, labels = logits.float().softmax(-1)[..., :-1].max(-1)  # (B, Q)

    results = []
    for s, lab, b in zip(scores, labels, boxes):
        if threshold is not None:
            keep = s > threshold
            s, lab, b = s[keep], lab[keep], b[keep]
        results.append({"scores": s, "labels": lab, "boxes": b})
    return results
