"""Center-based detection and tracking targets, losses and decoding (CenterNet / CenterTrack, as TransCenter uses).

Maps live at the model's output stride (4): a heatmap per class whose peaks are object centers (Gaussian
targets), the box size (w, h), the sub-pixel center offset, and a tracking displacement that moves each
object's center in frame t to its center in frame t-1 (all in output-map pixels).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

LOSS_WEIGHTS = {"hm": 1.0, "wh": 0.1, "reg": 1.0, "tracking": 1.0}  # CenterTrack / TransCenter defaults


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's Gaussian radius for a (height x width) box, the formula CenterNet's and TransCenter's code use
    (meant as the corner shift keeping IoU >= min_overlap; as published it solves its quadratics loosely, and we
    keep it so trained models see the targets they were trained with)."""
    a1, b1, c1 = 1.0, height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * a1 * c1)) / 2
    a2, b2, c2 = 4.0, 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: torch.Tensor, cx: int, cy: int, radius: int) -> None:
    """heatmap (H, W) <- max(heatmap, exp(-d^2 / (2 sigma^2))) around (cx, cy), sigma = (2 radius + 1) / 6."""
    H, W = heatmap.shape
    sigma = (2 * radius + 1) / 6
    x0, x1 = max(cx - radius, 0), min(cx + radius + 1, W)
    y0, y1 = max(cy - radius, 0), min(cy + radius + 1, H)
    if x0 >= x1 or y0 >= y1:
        return
    ys = torch.arange(y0, y1, dtype=heatmap.dtype, device=heatmap.device)[:, None] - cy  # (h, 1)
    xs = torch.arange(x0, x1, dtype=heatmap.dtype, device=heatmap.device)[None, :] - cx  # (1, w)
    g = torch.exp(-(xs * xs + ys * ys) / (2 * sigma * sigma))  # (h, w)
    heatmap[y0:y1, x0:x1] = torch.maximum(heatmap[y0:y1, x0:x1], g)


def build_targets(targets: Sequence[dict], num_classes: int, out_size: tuple[int, int], stride: int,
                  max_objects: int = 256) -> dict[str, torch.Tensor]:
    """Per-image ground truth -> dense training targets at the output stride.

    Each target: "boxes" (n, 4) xyxy in input pixels of frame t, "labels" (n,) int64 in [0, num_classes),
    optionally "track_ids" (n,) and "prev_boxes" / "prev_track_ids" for frame t-1 (same pixel frame), and
    "ignore_boxes" (k, 4) xyxy input pixels: regions (KITTI DontCare, UA-DETRAC ignored) whose unlabelled
    objects must not be taught as background.
    Returns hm (B, C, H, W), hm_weight (B, 1, H, W) (0 on the cells of ignored regions, else 1), index (B, K)
    flat positions, mask (B, K), wh / reg / tracking (B, K, 2), tracking_mask (B, K) (objects seen in both frames).
    """
    H, W = out_size
    B = len(targets)
    hm = torch.zeros(B, num_classes, H, W)
    hm_weight = torch.ones(B, 1, H, W)
    index = torch.zeros(B, max_objects, dtype=torch.int64)
    mask = torch.zeros(B, max_objects)
    wh = torch.zeros(B, max_objects, 2)
    reg = torch.zeros(B, max_objects, 2)
    tracking = torch.zeros(B, max_objects, 2)
    tracking_mask = torch.zeros(B, max_objects)
    for b, t in enumerate(targets):
        boxes = t["boxes"].float().cpu() / stride  # (n, 4) in output pixels
        labels = t["labels"].cpu()
        for x1, y1, x2, y2 in (t["ignore_boxes"].float().cpu() / stride).tolist() if "ignore_boxes" in t else []:
            # every output cell the region touches
            hm_weight[b, 0, max(0, int(y1)):min(H, math.ceil(y2)), max(0, int(x1)):min(W, math.ceil(x2))] = 0
        prev = {}
        if "prev_boxes" in t and "track_ids" in t:
            pb = t["prev_boxes"].float().cpu() / stride
            prev = {int(i): ((pb[j, 0] + pb[j, 2]) / 2, (pb[j, 1] + pb[j, 3]) / 2)
                    for j, i in enumerate(t["prev_track_ids"].tolist())}
        k = 0
        for j in range(min(len(boxes), max_objects)):
            x1, y1, x2, y2 = boxes[j].tolist()
            w, h = x2 - x1, y2 - y1
            if w <= 0 or h <= 0:
                continue
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            ix, iy = int(cx), int(cy)
            if not (0 <= ix < W and 0 <= iy < H):
                continue
            radius = max(0, int(gaussian_radius(math.ceil(h), math.ceil(w))))
            draw_gaussian(hm[b, int(labels[j])], ix, iy, radius)
            index[b, k] = iy * W + ix
            mask[b, k] = 1
            wh[b, k] = torch.tensor([w, h])
            reg[b, k] = torch.tensor([cx - ix, cy - iy])
            if prev and "track_ids" in t:
                tid = int(t["track_ids"][j])
                if tid in prev:
                    px, py = prev[tid]
                    tracking[b, k] = torch.tensor([float(px) - ix, float(py) - iy])
                    tracking_mask[b, k] = 1
            k += 1
    return {"hm": hm, "hm_weight": hm_weight, "index": index, "mask": mask, "wh": wh, "reg": reg, "tracking": tracking,
            "tracking_mask": tracking_mask}


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel focal loss (alpha 2, beta 4), summed and divided by the number of
    centers (at least 1). logits, target (B, C, H, W); target 1 at centers, Gaussian bumps around them.
    weight (B, 1 or C, H, W): scales the background (negative) term per cell; 0 ignores a cell, as CenterTrack
    does for ignored regions (centers there still count)."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg_weight = (1 - target).pow(4) if weight is None else (1 - target).pow(4) * weight
    pos_loss = torch.log(p) * (1 - p).pow(2) * pos
    neg_loss = torch.log(1 - p) * p.pow(2) * neg_weight * (1 - pos)
    num_pos = pos.sum().clamp(min=1)
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos


def gather_at(feature: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """feature (B, C, H, W), index (B, K) flat positions -> (B, K, C)."""
    B, C = feature.shape[:2]
    flat = feature.flatten(2)  # (B, C, H*W)
    return flat.gather(2, index[:, None, :].expand(B, C, index.shape[1])).transpose(1, 2)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of |pred - target| over masked entries / (number of masked entries, at least 1). pred/target (B, K, 2)."""
    m = mask[..., None].expand_as(pred)
    return (F.l1_loss(pred * m, target * m, reduction="sum")) / m.sum().clamp(min=1)


def center_losses(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
                  weights: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """{hm, wh, reg, tracking} output maps + build_targets' targets -> the four losses and their weighted "loss"."""
    weights = weights or LOSS_WEIGHTS
    idx = targets["index"]
    losses = {
        "hm": focal_loss(outputs["hm"], targets["hm"], targets.get("hm_weight")),
        "wh": masked_l1(gather_at(outputs["wh"], idx), targets["wh"], targets["mask"]),
        "reg": masked_l1(gather_at(outputs["reg"], idx), targets["reg"], targets["mask"]),
    }
    if "tracking" in outputs:
        losses["tracking"] = masked_l1(gather_at(outputs["tracking"], idx), targets["tracking"],
                                       targets["tracking_mask"])
    losses["loss"] = sum(losses[k] * weights[k] for k in list(losses))
    return losses


def decode(outputs: dict[str, torch.Tensor], stride: int, max_objects: int = 100,
           score_threshold: float = 0.0) -> list[dict[str, torch.Tensor]]:
    """Output maps -> per image {"boxes" (n, 4) xyxy input pixels, "scores", "labels", "centers" (n, 2), and
    "prev_centers" (n, 2): where each object's center was in frame t-1 (center + tracking displacement)}.

    Peaks are local maxima of the sigmoid heatmap (3x3 max-pool), the top max_objects over all classes."""
    hm = torch.sigmoid(outputs["hm"])  # (B, C, H, W)
    B, C, H, W = hm.shape
    peaks = hm * (F.max_pool2d(hm, 3, stride=1, padding=1) == hm)
    k = min(max_objects, C * H * W)
    scores, flat = peaks.flatten(1).topk(k)  # (B, k)
    labels = flat // (H * W)
    pos = flat % (H * W)
    ys, xs = (pos // W).float(), (pos % W).float()
    reg = gather_at(outputs["reg"], pos)  # (B, k, 2)
    wh = gather_at(outputs["wh"], pos)
    cx, cy = xs + reg[..., 0], ys + reg[..., 1]
    half_w, half_h = wh[..., 0].clamp(min=0) / 2, wh[..., 1].clamp(min=0) / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1) * stride  # (B, k, 4)
    centers = torch.stack([cx, cy], -1) * stride
    if "tracking" in outputs:
        # the displacement target is measured from the integer peak position (build_targets)
        prev_centers = (torch.stack([xs, ys], -1) + gather_at(outputs["tracking"], pos)) * stride
    else:
        prev_centers = centers.clone()
    results = []
    for b in range(B):
        keep = scores[b] > score_threshold
        results.append({"boxes": boxes[b, keep], "scores": scores[b, keep], "labels": labels[b, keep],
                        "centers": centers[b, keep], "prev_centers": prev_centers[b, keep]})
    return results
