"""Which ground-truth and result boxes a tracking evaluation scores, frame by frame, as the official evaluations
decide it, and the per-sequence data trackeval.metrics take.

Styles of ClassRule:
- "mot" (TrackEval's MotChallenge2DBox): results matched (IoU >= 0.5, Hungarian) to a gt row of a distractor
  class are removed; gt rows with flag 0 are not scored.
- "kitti" (TrackEval's Kitti2DBox, the KITTI tracking benchmark's HOTA / CLEAR): the class's gt rows and those of
  its distractor class (Van for Car, Person for Pedestrian) are matched to the class's results; results matched to
  a distractor, or to a gt row occluded more than 2 or truncated more than 0, are removed, those gt rows are not
  scored; unmatched results at most 25 px high, or lying more than half (intersection over their area) inside one
  DontCare region, are removed.
- "ignored" (the UA-DETRAC toolkit's rule, which rasterises the regions; also multi-class and class-agnostic
  MOTChallenge scoring, where the regions are the rows with id -1 and flag 0): gt rows and results with at least
  half their area inside the union of the ignored regions are removed before matching; gt rows with flag 0 are
  not scored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from vistra.detection.box_ops import box_iou

from .mot_io import MotTable, read_class_names

PEDESTRIAN = 1
MOT17_DISTRACTORS = (2, 7, 8, 12)  # person on vehicle, static person, distractor, reflection
MATCH_IOU = 0.5  # distractor matching threshold, as TrackEval
KITTI_DISTRACTORS = {"car": "van", "pedestrian": "person"}  # TrackEval Kitti2DBox
KITTI_SCORED = ("Car", "Pedestrian")  # what the KITTI benchmark scores
KITTI_MAX_OCCLUSION, KITTI_MAX_TRUNCATION, KITTI_MIN_HEIGHT = 2, 0, 25.0
IGNORED_SHARE = 0.5  # UA-DETRAC: a box at least this much inside the ignored regions is left out
_EPS = np.finfo(float).eps


@dataclass
class ClassRule:
    """Which rows one scored class takes: gt_classes / result_classes None = any class; style: see the module doc."""

    name: str
    gt_classes: tuple[int, ...] | None
    result_classes: tuple[int, ...] | None
    distractors: tuple[int, ...] = ()
    style: str = "mot"


def class_rules(gt_root: str | os.PathLike, class_agnostic: bool = False,
                names: dict[int, str] | None = None) -> list[ClassRule]:
    """The classes to score for the MOTChallenge sequences under gt_root: MOT17's pedestrians, each class of
    classes.txt (or of `names`, e.g. after a class map), or every class as one."""
    if class_agnostic:
        return [ClassRule("all", None, None, style="ignored")]
    names = names or read_class_names(gt_root)
    if names is None:
        return [ClassRule("pedestrian", (PEDESTRIAN, -1), None, MOT17_DISTRACTORS)]
    return [ClassRule(name, (cid,), (cid,), style="ignored") for cid, name in sorted(names.items())]


def select_rules(rules: list[ClassRule], classes: list[str] | None) -> list[ClassRule]:
    """The rules of the named classes (case-insensitive; all when None); ValueError for names with no rule."""
    if not classes:
        return rules
    have = {r.name.lower() for r in rules}
    missing = [c for c in classes if c.lower() not in have]
    if missing:
        raise ValueError(f"no class {', '.join(missing)} to score; the classes are {', '.join(r.name for r in rules)}")
    return [r for r in rules if r.name.lower() in {c.lower() for c in classes}]


def format_rules(format: str, names: dict[int, str], class_agnostic: bool = False,
                 classes: list[str] | None = None) -> list[ClassRule]:
    """The classes to score for KITTI ('kitti': Car and Pedestrian unless `classes` names others) or UA-DETRAC
    ('detrac': every class unless `classes`); class_agnostic: every class as one."""
    style = "kitti" if format == "kitti" else "ignored"
    if class_agnostic:
        return [ClassRule("all", None, None, style=style)]
    ids = {n.lower(): cid for cid, n in names.items()}
    wanted = classes or (KITTI_SCORED if format == "kitti" else list(names.values()))
    missing = [c for c in wanted if c.lower() not in ids]
    if missing:
        raise ValueError(f"no class {', '.join(missing)} to score; the classes are {', '.join(names.values())}")
    rules = []
    for name in wanted:
        distractor = KITTI_DISTRACTORS.get(name.lower()) if format == "kitti" else None
        extra = (ids[distractor],) if distractor in ids else ()
        rules.append(ClassRule(names[ids[name.lower()]], (ids[name.lower()],), (ids[name.lower()],), extra, style))
    return rules


def sequence_data(gt: MotTable, pred: MotTable, length: int, rule: ClassRule,
                  ignore: Callable[[int], np.ndarray] | None = None) -> dict[str, Any]:
    """One sequence and class in the form trackeval.metrics take: per frame gt_ids, tracker_ids (relabelled
    0..n-1) and similarity_scores (IoU, (n_gt, n_pred)), plus the counts. ignore(frame) -> (k, 4) regions."""
    keys = ("gt_ids", "tracker_ids", "similarity_scores")
    data: dict[str, Any] = {k: [] for k in keys}
    if rule.result_classes is not None:
        pred = pred.select(np.isin(pred.classes, rule.result_classes))
    prepare = _STYLES[rule.style]
    for frame in range(1, length + 1):
        regions = ignore(frame) if ignore is not None else np.zeros((0, 4))
        gt_ids, pred_ids, iou = prepare(gt.at_frame(frame), pred.at_frame(frame), regions, rule)
        data["gt_ids"].append(gt_ids)
        data["tracker_ids"].append(pred_ids)
        data["similarity_scores"].append(iou)
    for side in ("gt", "tracker"):
        ids = data[f"{side}_ids"]
        unique = np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
        data[f"{side}_ids"] = [np.searchsorted(unique, frame_ids) for frame_ids in ids]  # 0..n-1
        data[f"num_{side}_ids"] = len(unique)
        data[f"num_{side}_dets"] = int(sum(len(frame_ids) for frame_ids in ids))
    data["num_timesteps"] = length
    return data


# ------------------------------------------------------------------------------------ frame rules
def _mot_frame(g: MotTable, p: MotTable, regions: np.ndarray, rule: ClassRule):
    """-> (gt ids, result ids, (n_gt, n_pred) IoU) of one frame, MotChallenge2DBox's way."""
    iou = box_iou_xywh(g.boxes, p.boxes)  # (n_gt, n_pred) before any filtering, as TrackEval
    if rule.distractors and len(g) and len(p):
        drop = matched_to(iou, np.isin(g.classes, rule.distractors))
        p, iou = p.select(~drop), iou[:, ~drop]
    keep = g.scores != 0
    if rule.gt_classes is not None:
        keep &= np.isin(g.classes, rule.gt_classes)
    return g.ids[keep], p.ids, iou[keep]


def _kitti_frame(g: MotTable, p: MotTable, regions: np.ndarray, rule: ClassRule):
    """-> (gt ids, result ids, (n_gt, n_pred) IoU) of one frame, Kitti2DBox's way."""
    if rule.gt_classes is not None:
        g = g.select(np.isin(g.classes, rule.gt_classes + rule.distractors))
    n = len(g)
    occluded = g.extras.get("occluded", np.zeros(n, np.int64)) > KITTI_MAX_OCCLUSION
    truncated = g.extras.get("truncated", np.zeros(n)).astype(np.int64) > KITTI_MAX_TRUNCATION
    scored = ~occluded & ~truncated & (np.isin(g.classes, rule.gt_classes) if rule.gt_classes else True)
    iou = box_iou_xywh(g.boxes, p.boxes)  # (n_gt, n_pred)
    drop = np.zeros(len(p), dtype=bool)
    unmatched = np.ones(len(p), dtype=bool)
    if n and len(p):
        rows, cols = _match(iou)
        drop[cols[~scored[rows]]] = True  # matched to a distractor class, occluded or truncated row
        unmatched[cols] = False
    too_small = p.boxes[:, 3] <= KITTI_MIN_HEIGHT + _EPS
    in_dontcare = np.any(intersection_over_area(p.boxes, regions) > 0.5 + _EPS, axis=1)
    drop |= unmatched & (too_small | in_dontcare)
    return g.ids[scored], p.ids[~drop], iou[scored][:, ~drop]


def _ignored_frame(g: MotTable, p: MotTable, regions: np.ndarray, rule: ClassRule):
    """-> (gt ids, result ids, (n_gt, n_pred) IoU) of one frame without boxes mostly inside ignored regions."""
    keep = g.scores != 0
    if rule.gt_classes is not None:
        keep &= np.isin(g.classes, rule.gt_classes)
    g = g.select(keep)
    if len(regions):
        g = g.select(share_inside(g.boxes, regions) < IGNORED_SHARE)
        p = p.select(share_inside(p.boxes, regions) < IGNORED_SHARE)
    return g.ids, p.ids, box_iou_xywh(g.boxes, p.boxes)


_STYLES = {"mot": _mot_frame, "kitti": _kitti_frame, "ignored": _ignored_frame}


# ---------------------------------------------------------------------------------------- geometry
def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) left, top, width, height boxes -> (N, M)."""
    to_xyxy = lambda x: torch.from_numpy(np.concatenate([x[:, :2], x[:, :2] + x[:, 2:]], axis=1))  # noqa: E731
    return box_iou(to_xyxy(a), to_xyxy(b))[0].numpy().reshape(len(a), len(b))


def intersection_over_area(a: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """(N, K): the share of each (N, 4) left, top, width, height box's area inside each of (K, 4) regions
    (0 for boxes with no area)."""
    a0, a1 = a[:, None, :2], a[:, None, :2] + a[:, None, 2:]  # (N, 1, 2)
    r0, r1 = regions[None, :, :2], regions[None, :, :2] + regions[None, :, 2:]  # (1, K, 2)
    inter = np.prod(np.clip(np.minimum(a1, r1) - np.maximum(a0, r0), 0, None), axis=-1)  # (N, K)
    area = a[:, 2] * a[:, 3]
    return np.where(area[:, None] > _EPS, inter / np.maximum(area, _EPS)[:, None], 0.0)


def share_inside(a: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """(N,): the share of each (N, 4) left, top, width, height box's area inside the union of the (K, 4) regions,
    exactly: the region edges cut the plane into cells, each inside the union or not."""
    if not len(a) or not len(regions):
        return np.zeros(len(a))
    xs = np.unique(np.r_[regions[:, 0], regions[:, 0] + regions[:, 2]])  # (X + 1,) cell edges
    ys = np.unique(np.r_[regions[:, 1], regions[:, 1] + regions[:, 3]])  # (Y + 1,)
    cx, cy = (xs[1:] + xs[:-1]) / 2, (ys[1:] + ys[:-1]) / 2  # cell centres
    inside_x = (cx[None] > regions[:, :1]) & (cx[None] < regions[:, :1] + regions[:, 2:3])  # (K, X)
    inside_y = (cy[None] > regions[:, 1:2]) & (cy[None] < regions[:, 1:2] + regions[:, 3:4])  # (K, Y)
    inside = np.any(inside_x[:, :, None] & inside_y[:, None, :], axis=0).astype(np.float64)  # (X, Y)
    over_x = np.clip(np.minimum(a[:, :1] + a[:, 2:3], xs[None, 1:]) - np.maximum(a[:, :1], xs[None, :-1]), 0, None)
    over_y = np.clip(np.minimum(a[:, 1:2] + a[:, 3:4], ys[None, 1:]) - np.maximum(a[:, 1:2], ys[None, :-1]), 0, None)
    covered = np.einsum("nx,xy,ny->n", over_x, inside, over_y)  # (N,) area inside the union
    return covered / np.maximum(a[:, 2] * a[:, 3], _EPS)


def _match(iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the IoU >= 0.5 Hungarian matching of gt rows to results, as TrackEval's preprocessing."""
    score = np.where(iou >= MATCH_IOU - _EPS, iou, 0.0)
    rows, cols = linear_sum_assignment(-score)
    real = score[rows, cols] > _EPS
    return rows[real], cols[real]


def matched_to(iou: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(M,) bool: predictions that the IoU >= 0.5 Hungarian matching pairs with a gt row where targets is True."""
    rows, cols = _match(iou)
    drop = np.zeros(iou.shape[1], dtype=bool)
    drop[cols[targets[rows]]] = True
    return drop
