"""Detection: DETR (and Deformable DETR), their set-prediction criterion and post-processing."""
from __future__ import annotations

from torch import nn

from vistra.detection.criterion import SetCriterion
from vistra.detection.postprocess import postprocess


def build_criterion(model: nn.Module) -> SetCriterion:
    """The official criterion for a vistra detector: loss names and weights as the paper's code.

    Returns callable(outputs, targets) -> dict of losses (loss_ce, loss_bbox, loss_giou, their _i / _enc copies,
    and `loss`, the weighted total); targets are a list of {"labels": (n,) int64, "boxes": (n, 4) cxcywh}.
    """
    from vistra.detection.criterion import build_criterion as _build

    c = model.config
    deformable = getattr(model, "arch", "detr") == "deformable_detr"
    aux_layers = c.dec_layers - 1 if c.aux_loss else 0
    return _build(c.num_classes, deformable=deformable, aux_layers=aux_layers,
                  two_stage=getattr(c, "two_stage", False))


__all__ = ["SetCriterion", "build_criterion", "postprocess"]
