"""Semantic segmentation metrics from a confusion matrix: mIoU, pixel accuracy, mean class accuracy."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """Accumulates a (K, K) pixel confusion matrix, rows = ground truth, columns = prediction.

    Pixels whose target is `ignore_index` are skipped. `compute()` follows mmseg: the IoU of class k is
    TP / (TP + FP + FN); a class absent from both predictions and targets has NaN IoU (and a class absent from
    the targets NaN accuracy) and is left out of the means.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch. pred: class indices, same shape as target (e.g. (B, H, W)), or logits (B, K, H, W)
        (argmax over dim 1); target: class indices in [0, K) or `ignore_index`."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)  # (B, H, W)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        k = self.num_classes
        keep = target != self.ignore_index
        pred, target = pred[keep].long(), target[keep].long()  # (N,)
        for name, values in (("target", target), ("pred", pred)):
            bad = values[(values < 0) | (values >= k)]
            if bad.numel():
                raise ValueError(f"{name} holds values {bad.unique()[:10].tolist()} outside [0, {k}) "
                                 f"that are not ignore_index={self.ignore_index}")
        counts = torch.bincount(target * k + pred, minlength=k * k)  # (K*K,)
        self.matrix = self.matrix.to(counts.device) + counts.view(k, k)

    def all_reduce(self) -> None:
        """Sum the matrices of every process when torch.distributed is initialised (no-op otherwise)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.matrix)

    def compute(self) -> dict[str, Any]:
        """{"mIoU", "pixel_acc", "mean_acc"} as floats in [0, 1] (NaN if nothing was counted), plus
        "per_class_iou" and "per_class_acc" as lists of K floats (NaN for classes left out)."""
        m = self.matrix.double().cpu()
        tp = m.diag()  # (K,)
        gt, predicted = m.sum(1), m.sum(0)  # (K,), (K,)
        iou = tp / (gt + predicted - tp)  # 0 / 0 = NaN for classes absent from both
        acc = tp / gt
        total = m.sum()
        return {
            "mIoU": _nanmean(iou),
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
            "mean_acc": _nanmean(acc),
            "per_class_iou": iou.tolist(),
            "per_class_acc": acc.tolist(),
        }


def _nanmean(values: torch.Tensor) -> float:
    present = values[~values.isnan()]
    return float(present.mean()) if present.numel() else math.nan
