"""Hungarian matching between DETR's predictions and the ground-truth boxes (one-to-one, per image).

DETR predicts a fixed-size set of Q boxes; the loss needs to know which prediction answers which target.
The matcher solves, for every image, the assignment that minimises

    cost = cost_class * class_cost + cost_bbox * L1(boxes) + cost_giou * (-GIoU(boxes))

and leaves the other Q - n predictions unmatched (they are trained towards "no object").

Speed: the cost of every image is computed at once on the model's device, as one (B, Q, T_max) tensor with the
targets padded to the largest count T_max in the batch, and copied to the CPU in a single transfer. Only the
assignment itself (scipy's linear_sum_assignment, which has no GPU version) runs per image. Padding per image
rather than concatenating all targets (the official code builds a (B*Q, sum T) matrix and keeps only its
diagonal blocks) makes the work and the copy B times smaller for the same result.
"""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, generalized_box_iou

# A valid, non-degenerate cxcywh box used to pad targets; its columns are cut off before the assignment.
_PAD_BOX = (0.5, 0.5, 1.0, 1.0)


class HungarianMatcher(nn.Module):
    """One-to-one assignment of predictions to targets, for DETR (softmax) or Deformable DETR (focal) heads.

    Args:
        cost_class: weight of the classification cost (DETR 1, Deformable DETR 2).
        cost_bbox: weight of the L1 distance between cxcywh boxes (5 in both).
        cost_giou: weight of the negative generalised IoU (2 in both).
        focal: False for DETR's softmax head, whose class cost is -p(target class); True for Deformable DETR's
            sigmoid head, whose class cost is the focal loss of a positive minus that of a negative.
        focal_alpha, focal_gamma: focal-cost parameters (the official Deformable DETR matcher fixes 0.25 and 2).
    """

    def __init__(self, cost_class: float = 1, cost_bbox: float = 5, cost_giou: float = 2, focal: bool = False,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0):
        super().__init__()
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: all three costs are 0, so every assignment would be equally good")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal = focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    @torch.no_grad()
    def forward(self, outputs: dict, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """Match every image of the batch.

        Args:
            outputs: dict with
                "pred_logits": (B, Q, C) class logits (C = num_classes + 1 for DETR, num_classes for focal);
                "pred_boxes": (B, Q, 4) boxes, normalised cxcywh.
            targets: list of B dicts with
                "labels": (n_i,) int64 class ids;
                "boxes": (n_i, 4) normalised cxcywh. n_i may be 0.

        Returns:
            list of B tuples (query_idx, target_idx), int64 CPU tensors of length min(Q, n_i): prediction
            query_idx[k] is matched to target target_idx[k]; query_idx is sorted ascending.
        """
        cost = self.cost_matrix(outputs, targets)  # (B, Q, T_max) on the CPU
        sizes = [len(t["boxes"]) for t in targets]
        indices = []
        for c, n in zip(cost, sizes):
            rows, cols = linear_sum_assignment(c[:, :n].numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    @torch.no_grad()
    def cost_matrix(self, outputs: dict, targets: list[dict]) -> Tensor:
        """(B, Q, T_max) float CPU tensor of matching costs; columns >= n_i of image i are padding (meaningless).

        Non-finite costs (e.g. from infinite logits) are replaced by the largest float, so such a prediction is
        only matched when nothing else can be, instead of crashing linear_sum_assignment. NaN or inverted boxes
        raise ValueError in generalized_box_iou instead: they mean a diverged model or targets in the wrong format.
        """
        logits, pred_boxes = outputs["pred_logits"], outputs["pred_boxes"]
        B, Q = logits.shape[:2]
        if len(targets) != B:
            raise ValueError(f"HungarianMatcher: {len(targets)} target dicts for a batch of {B} predictions")
        t_max = max((len(t["boxes"]) for t in targets), default=0)
        if t_max == 0:
            return torch.zeros(B, Q, 0)
        labels, boxes = _pad_targets(targets, t_max, logits.device)  # (B, T), (B, T, 4)
        # matching is done in float32 even under autocast: softmax/log in half precision change the assignment
        logits, pred_boxes = logits.float(), pred_boxes.float()
        class_cost = self._class_cost(logits, labels)  # (B, Q, T)
        bbox_cost = torch.cdist(pred_boxes, boxes, p=1)  # (B, Q, T)
        giou_cost = -generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(boxes))  # (B, Q, T)
        cost = self.cost_bbox * bbox_cost + self.cost_class * class_cost + self.cost_giou * giou_cost
        big = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big).cpu()

    def _class_cost(self, logits: Tensor, labels: Tensor) -> Tensor:
        """(B, Q, C) logits, (B, T) labels -> (B, Q, T) cost of calling query q an instance of target t's class."""
        B, Q, _ = logits.shape
        index = labels[:, None, :].expand(B, Q, labels.shape[1])  # (B, Q, T)
        if not self.focal:
            # -p(class) stands in for the NLL: same ordering role, bounded, and the "1 -" constant is dropped
            return -logits.softmax(-1).gather(2, index)
        # Deformable DETR: focal loss if the query were a positive of that class minus focal loss if a negative,
        # so the class cost is on the same scale as the focal classification loss used for training.
        prob = logits.sigmoid().gather(2, index)  # (B, Q, T)
        alpha, gamma = self.focal_alpha, self.focal_gamma
        neg = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        pos = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        return pos - neg


def _pad_targets(targets: list[dict], t_max: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Stack the n_i labels/boxes into (B, T_max) labels (padded with 0) and (B, T_max, 4) float32 boxes (padded
    with a valid box), with a fixed number of device operations whatever the batch size."""
    B = len(targets)
    sizes = torch.as_tensor([len(t["boxes"]) for t in targets], device=device)  # (B,)
    valid = torch.arange(t_max, device=device)[None, :] < sizes[:, None]  # (B, T_max), True on real targets
    # masked_scatter_ fills the True positions in row-major order, i.e. in the order of the concatenation
    labels = torch.zeros(B, t_max, dtype=torch.int64, device=device)
    labels.masked_scatter_(valid, torch.cat([t["labels"] for t in targets]).to(device, torch.int64))
    boxes = torch.tensor(_PAD_BOX, device=device).repeat(B, t_max, 1)
    boxes.masked_scatter_(valid[..., None], torch.cat([t["boxes"] for t in targets]).to(device, torch.float32))
    return labels, boxes
