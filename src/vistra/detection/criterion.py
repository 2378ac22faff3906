"""Set-prediction losses of DETR and Deformable DETR (the official ``SetCriterion``), and their builder.

For every decoder output (the last layer, each ``aux_outputs`` entry and the two-stage ``enc_outputs``) the
predictions are matched one-to-one to the targets by the Hungarian matcher, then:
- ``loss_ce``: classification. DETR: cross-entropy over C+1 classes where unmatched queries are trained
  towards the last "no object" class, which is down-weighted by ``eos_coef`` (objects are rare among 100
  queries). Deformable DETR: sigmoid focal loss over C classes, an unmatched query being all-negative.
- ``loss_bbox``: L1 between matched cxcywh boxes; ``loss_giou``: 1 - GIoU of matched boxes (scale invariant).
- ``class_error`` (last layer only) and ``cardinality_error``: logged, no gradient, not in the total.

Box losses (and the focal loss) are sums divided by the number of target boxes in the whole batch, averaged
over processes, so every box weighs the same whatever the batch composition; DETR's cross-entropy is a
weighted mean over queries, as in the official code.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .box_ops import aligned_generalized_box_iou, box_cxcywh_to_xyxy
from .matcher import HungarianMatcher

Indices = list[tuple[Tensor, Tensor]]


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al., 2017) of logits against 0/1 targets, any equal shapes -> same shape.

    (1 - p_t)^gamma down-weights easy examples (the hundreds of obvious background queries); alpha balances
    positives (alpha) against negatives (1 - alpha); alpha < 0 disables it.
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


class SetCriterion(nn.Module):
    """DETR / Deformable DETR training losses.

    Args:
        num_classes: number of object classes, without "no object" (= largest class id + 1; COCO: 91).
        matcher: a HungarianMatcher (its ``focal`` should match this criterion's).
        weight_dict: loss name -> weight for the total ``loss``, including the suffixed copies
            (``loss_ce_0``..., ``loss_ce_enc``...). Losses missing from it are reported but not added.
        eos_coef: relative weight of the "no object" class in DETR's cross-entropy (ignored when focal).
        losses: which of "labels", "boxes", "cardinality" to compute.
        focal_alpha: alpha of the focal loss (Deformable DETR).
        focal: True for Deformable DETR's sigmoid focal classification, False for DETR's softmax.
        focal_gamma: gamma of the focal loss (official: 2).

    Call ``criterion(outputs, targets)``:
        outputs: dict with "pred_logits" (B, Q, C+1 or C when focal), "pred_boxes" (B, Q, 4) normalised cxcywh,
            optionally "aux_outputs" (list of dicts with the same two keys) and "enc_outputs" (one such dict).
        targets: list of B dicts with "labels" (n_i,) int64 and "boxes" (n_i, 4) normalised cxcywh.
    Returns: dict of 0-d tensors: every loss and logged metric (aux ones suffixed ``_{i}``, encoder ones ``_enc``)
        and "loss", the weighted total to call backward on.
    """

    def __init__(self, num_classes: int, matcher: HungarianMatcher, weight_dict: dict[str, float],
                 eos_coef: float = 0.1, losses=("labels", "boxes", "cardinality"), focal_alpha: float = 0.25,
                 focal: bool = False, focal_gamma: float = 2.0):
        super().__init__()
        if getattr(matcher, "focal", focal) != focal:
            raise ValueError(f"SetCriterion(focal={focal}) with a matcher built with focal={matcher.focal}: the class "
                             "cost and the classification loss must both be softmax (DETR) or both focal (Deformable)")
        unknown = set(losses) - {"labels", "boxes", "cardinality"}
        if unknown:
            raise ValueError(f"SetCriterion: unknown losses {sorted(unknown)}; choose from labels, boxes, cardinality")
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        self.focal = focal
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)  # (C+1,)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        self._check(outputs, targets)
        num_boxes = self._num_boxes(targets, outputs["pred_logits"].device)
        losses = self._losses_for(outputs, targets, num_boxes, suffix="", log=True)
        for i, aux in enumerate(outputs.get("aux_outputs") or []):
            losses.update(self._losses_for(aux, targets, num_boxes, suffix=f"_{i}"))
        if outputs.get("enc_outputs") is not None:
            # two-stage proposals are class-agnostic: every target is "an object", class 0 (as official)
            bin_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            losses.update(self._losses_for(outputs["enc_outputs"], bin_targets, num_boxes, suffix="_enc"))
        self._check_weights(losses)
        total = torch.zeros((), device=outputs["pred_logits"].device)
        losses["loss"] = sum((losses[k] * w for k, w in self.weight_dict.items() if k in losses), total)
        return losses

    def _losses_for(self, outputs: dict, targets: list[dict], num_boxes: Tensor, suffix: str,
                    log: bool = False) -> dict[str, Tensor]:
        """Match one decoder output to the targets and compute the requested losses, names + suffix."""
        indices = self.matcher(outputs, targets)
        out: dict[str, Tensor] = {}
        if "labels" in self.losses:
            out.update(self.loss_labels(outputs, targets, indices, num_boxes, log=log))
        if "boxes" in self.losses:
            out.update(self.loss_boxes(outputs, targets, indices, num_boxes))
        if "cardinality" in self.losses:
            out.update(self.loss_cardinality(outputs, targets, indices, num_boxes))
        return {k + suffix: v for k, v in out.items()}

    def loss_labels(self, outputs: dict, targets: list[dict], indices: Indices, num_boxes: Tensor,
                    log: bool = False) -> dict[str, Tensor]:
        """loss_ce (and class_error, in %, when log): classification of every query."""
        logits = outputs["pred_logits"]  # (B, Q, C+1) or (B, Q, C) when focal
        B, Q, C = logits.shape
        batch_idx, query_idx = _query_index(indices, logits.device)
        matched_labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)]).to(logits.device)
        # class of every query: the matched target's, else "no object" (index C: last column for softmax,
        # one past the end for focal, where it means "negative for every class")
        no_object = C - 1 if not self.focal else C
        target_classes = torch.full((B, Q), no_object, dtype=torch.int64, device=logits.device)  # (B, Q)
        target_classes[batch_idx, query_idx] = matched_labels
        if self.focal:
            onehot = F.one_hot(target_classes, C + 1)[..., :C].to(logits.dtype)  # (B, Q, C), no-object -> zeros
            # the official mean over queries, sum, / num_boxes, * Q is the plain sum / num_boxes: every (query, class)
            # term counts once. Written in the official order so float32 rounding matches the reference too.
            focal = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma)  # (B, Q, C)
            loss_ce = focal.mean(1).sum() / num_boxes * Q
        else:
            weight = self.empty_weight.to(logits.dtype)
            # weighted mean over the B*Q queries; (B*Q, C) rows keep the softmax on the contiguous last dim
            loss_ce = F.cross_entropy(logits.flatten(0, 1), target_classes.flatten(), weight)
        out = {"loss_ce": loss_ce}
        if log:
            out["class_error"] = 100 - _top1_accuracy(logits[batch_idx, query_idx].detach(), matched_labels)
        return out

    def loss_boxes(self, outputs: dict, targets: list[dict], indices: Indices, num_boxes: Tensor) -> dict[str, Tensor]:
        """loss_bbox (L1) and loss_giou (1 - GIoU) over the matched pairs, each summed / num_boxes."""
        batch_idx, query_idx = _query_index(indices, outputs["pred_boxes"].device)
        src = outputs["pred_boxes"][batch_idx, query_idx]  # (M, 4) cxcywh, M = matched pairs in the batch
        tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]).to(src)  # (M, 4)
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        giou = aligned_generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt))  # (M,)
        loss_giou = (1 - giou).sum() / num_boxes
        return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}

    @torch.no_grad()
    def loss_cardinality(self, outputs: dict, targets: list[dict], indices: Indices,
                         num_boxes: Tensor) -> dict[str, Tensor]:
        """cardinality_error: mean |#predicted objects - #targets| per image (logging only).

        A query counts as an object when its best class is not "no object" (softmax), or when its best
        sigmoid score is above 0.5 (focal; the official Deformable DETR reuses DETR's argmax rule, which with
        sigmoid scores only tests "is the best class not the last class" - we count like transformers does).
        """
        logits = outputs["pred_logits"]
        n_targets = torch.as_tensor([len(t["labels"]) for t in targets], device=logits.device, dtype=torch.float32)
        if self.focal:
            n_pred = (logits.sigmoid().amax(-1) > 0.5).sum(1)  # (B,)
        else:
            n_pred = (logits.argmax(-1) != logits.shape[-1] - 1).sum(1)  # (B,)
        return {"cardinality_error": F.l1_loss(n_pred.float(), n_targets)}

    def _num_boxes(self, targets: list[dict], device: torch.device) -> Tensor:
        """Average number of target boxes per process (0-d float tensor), at least 1."""
        num_boxes = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every process must divide by the same number, or the gradients averaged by DDP are skewed
            torch.distributed.all_reduce(num_boxes)
            num_boxes = num_boxes / torch.distributed.get_world_size()
        return num_boxes.clamp(min=1)

    def _check(self, outputs: dict, targets: list[dict]) -> None:
        logits = outputs["pred_logits"]
        expected = self.num_classes if self.focal else self.num_classes + 1
        if logits.shape[-1] != expected:
            kind = "num_classes (sigmoid focal head)" if self.focal else "num_classes + 1 (softmax head with no-object)"
            raise ValueError(f"SetCriterion: pred_logits has {logits.shape[-1]} classes, expected {kind} = {expected}")
        if len(targets) != logits.shape[0]:
            raise ValueError(f"SetCriterion: {len(targets)} target dicts for a batch of {logits.shape[0]} images")
        labels = torch.cat([t["labels"].reshape(-1) for t in targets])
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"SetCriterion: target labels must be in [0, {self.num_classes}), got "
                             f"min {int(labels.min())} max {int(labels.max())}; num_classes is the largest id + 1")

    def _check_weights(self, losses: dict[str, Tensor]) -> None:
        # an aux/enc loss that is computed but has no weight while its base loss has one would silently drop
        # out of the total: that is a builder mismatch (aux_layers / two_stage), so say so
        for name in losses:
            base = name.rsplit("_", 1)[0]
            if name not in self.weight_dict and base in self.weight_dict:
                raise KeyError(f"SetCriterion: weight_dict has {base!r} but no {name!r}: the model returns more "
                               "aux_outputs/enc_outputs than the criterion was built for (check aux_layers, two_stage)")


def _query_index(indices: Indices, device: torch.device) -> tuple[Tensor, Tensor]:
    """Flat (batch index, query index) pairs of all matched queries, each (M,)."""
    batch_idx = torch.cat([torch.full_like(q, i) for i, (q, _) in enumerate(indices)]).to(device)
    query_idx = torch.cat([q for q, _ in indices]).to(device)
    return batch_idx, query_idx


def _top1_accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Top-1 accuracy in % of (M, C) logits against (M,) labels; 0 when M == 0 (as the official code)."""
    if labels.numel() == 0:
        return torch.zeros((), device=logits.device)
    return (logits.argmax(-1) == labels).float().mean() * 100


def build_criterion(num_classes: int, *, deformable: bool, aux_layers: int = 0, two_stage: bool = False,
                    cls_loss_coef: float | None = None, bbox_loss_coef: float = 5.0, giou_loss_coef: float = 2.0,
                    set_cost_class: float | None = None, set_cost_bbox: float = 5.0, set_cost_giou: float = 2.0,
                    eos_coef: float = 0.1, focal_alpha: float = 0.25) -> SetCriterion:
    """The official criterion of DETR (deformable=False) or Deformable DETR (deformable=True).

    Keyword names are the official command-line flags. Defaults: DETR class cost/weight 1, eos_coef 0.1,
    softmax; Deformable DETR class cost/weight 2, sigmoid focal loss (alpha 0.25). Both: L1 5, GIoU 2.

    Args:
        num_classes: number of object classes without "no object" (largest class id + 1).
        deformable: sigmoid focal head (Deformable DETR) instead of the softmax + no-object head (DETR).
        aux_layers: number of entries the model returns in ``aux_outputs`` (dec_layers - 1 with aux loss, else 0).
        two_stage: the model returns ``enc_outputs`` (Deformable DETR two-stage).
    """
    cls_w = cls_loss_coef if cls_loss_coef is not None else (2.0 if deformable else 1.0)
    cost_class = set_cost_class if set_cost_class is not None else (2.0 if deformable else 1.0)
    matcher = HungarianMatcher(cost_class, set_cost_bbox, set_cost_giou, focal=deformable, focal_alpha=focal_alpha)
    base = {"loss_ce": cls_w, "loss_bbox": bbox_loss_coef, "loss_giou": giou_loss_coef}
    weight_dict = dict(base)
    suffixes = [f"_{i}" for i in range(aux_layers)] + (["_enc"] if two_stage else [])
    for s in suffixes:
        weight_dict.update({k + s: v for k, v in base.items()})
    return SetCriterion(num_classes, matcher, weight_dict, eos_coef=eos_coef, focal_alpha=focal_alpha, focal=deformable)
