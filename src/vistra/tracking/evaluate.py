"""HOTA, CLEAR-MOT (MOTA, MOTP, IDSW, ...) and Identity (IDF1, ...) scores of tracking results, computed by the
`trackeval` package's metric classes on sequences vistra reads itself.

vistra reads the files (so malformed rows get a file-and-line error, or a counted skip) and prepares each
sequence the way TrackEval's MotChallenge2DBox does, which keeps MOT17 numbers identical to the official
script's, then hands the per-frame IDs and IoUs to trackeval.metrics. Reading ourselves is also what lets
multi-class datasets (vistra's classes.txt beside the sequences) be scored per class, which TrackEval's
MOTChallenge reader refuses (pedestrians only). trackeval 1.3 uses no NumPy alias removed in NumPy 2, so no
compatibility shim is needed.

Modes:
- MOTChallenge (no classes.txt): pedestrians (class 1) are scored; predictions matched (IoU >= 0.5) to a
  distractor (classes 2, 7, 8, 12) are removed first; gt rows with flag 0 are ignored. Result classes are unused.
- multi-class (GT_ROOT/classes.txt): each class is scored on its own (gt and results of that class), then
  combined over classes averaged by detections ("all") and by class ("class_averaged").
- class_agnostic: every considered gt row against every result row, one class "all".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from vistra.data.errors import DataError
from vistra.detection.box_ops import box_iou

from .mot_io import MotTable, find_sequences, read_class_names, read_gt, read_mot_txt, read_seqinfo

PEDESTRIAN = 1
MOT17_DISTRACTORS = (2, 7, 8, 12)  # person on vehicle, static person, distractor, reflection
MATCH_IOU = 0.5  # distractor matching threshold, as TrackEval
HEADLINE = ("HOTA", "DetA", "AssA", "MOTA", "MOTP", "IDF1", "IDSW", "CLR_FP", "CLR_FN", "GT_IDs", "IDs")
METRICS_FILE = "track_metrics.json"


@dataclass
class ClassRule:
    """Which rows one scored class takes: gt_classes / result_classes None = any class."""

    name: str
    gt_classes: tuple[int, ...] | None
    result_classes: tuple[int, ...] | None
    distractors: tuple[int, ...] = ()


def class_rules(gt_root: str | os.PathLike, class_agnostic: bool = False) -> list[ClassRule]:
    """The classes to score for the sequences under gt_root (see the module doc)."""
    if class_agnostic:
        return [ClassRule("all", None, None)]
    names = read_class_names(gt_root)
    if names is None:
        return [ClassRule("pedestrian", (PEDESTRIAN, -1), None, MOT17_DISTRACTORS)]
    return [ClassRule(name, (cid,), (cid,)) for cid, name in sorted(names.items())]


def evaluate_tracking(gt_root: str | os.PathLike, results: str | os.PathLike, class_agnostic: bool = False,
                      skip_bad: bool = False, out_json: str | os.PathLike | None = None) -> dict[str, Any]:
    """Score the results (RESULTS/<sequence>.txt, or RESULTS/data/<sequence>.txt) of every sequence under gt_root.

    Returns {"sequences": {seq: {class: metrics}}, "combined": {class: metrics, ("all", "class_averaged" when
    multi-class)}, "classes": [...], "skipped": ["<file>: line N: problem", ...]}; metrics are flat dicts of
    TrackEval fields (HOTA family averaged over its IoU thresholds, as TrackEval's summaries), fractions in
    [0, 1] and counts. out_json: also write that dict there.
    """
    import trackeval  # lazy: only evaluation needs it

    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
               trackeval.metrics.Identity({"PRINT_CONFIG": False}), trackeval.metrics.Count()]
    rules = class_rules(gt_root, class_agnostic)
    per_seq: dict[str, dict[str, dict[str, dict]]] = {}  # seq -> class -> metric -> raw trackeval result
    skipped: list[str] = []
    for seq_dir in find_sequences(gt_root):
        info = read_seqinfo(seq_dir)
        gt = read_gt(seq_dir, skip_bad=skip_bad)
        found = _results_file(results, seq_dir.name)
        pred = read_mot_txt(found, skip_bad=skip_bad)
        skipped += [f"{seq_dir / 'gt' / 'gt.txt'}: {s}" for s in gt.skipped] + [f"{found}: {s}" for s in pred.skipped]
        late = pred.frames > info.length
        if late.any():
            raise DataError(found, f"results for frame {int(pred.frames[late].max())}, but the sequence has "
                                   f"{info.length} frames")
        per_seq[seq_dir.name] = {}
        for rule in rules:
            data = sequence_data(gt, pred, info.length, rule)
            per_seq[seq_dir.name][rule.name] = {m.get_name(): m.eval_sequence(data) for m in metrics}
    combined = {r.name: {m.get_name(): m.combine_sequences({s: c[r.name][m.get_name()] for s, c in per_seq.items()})
                         for m in metrics} for r in rules}
    if len(rules) > 1:  # per sequence and overall: every class together, weighted by detections
        for classes in (*per_seq.values(), combined):
            classes["all"] = _combine_classes(metrics, {r.name: classes[r.name] for r in rules}, by_class=False)
        combined["class_averaged"] = _combine_classes(metrics, {r.name: combined[r.name] for r in rules}, True)
    report = {"gt_root": str(gt_root), "results": str(results), "classes": [r.name for r in rules],
              "sequences": {s: {c: summarise(m, metrics) for c, m in classes.items() if _has_data(m)}
                            for s, classes in per_seq.items()},
              "combined": {c: summarise(m, metrics) for c, m in combined.items() if _has_data(m)}, "skipped": skipped}
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(report, indent=2) + "\n")
    return report


def sequence_data(gt: MotTable, pred: MotTable, length: int, rule: ClassRule) -> dict[str, Any]:
    """One sequence and class in the form trackeval.metrics take: per frame gt_ids, tracker_ids (relabelled
    0..n-1) and similarity_scores (IoU, (n_gt, n_pred)), plus the counts."""
    keys = ("gt_ids", "tracker_ids", "similarity_scores")
    data: dict[str, Any] = {k: [] for k in keys}
    if rule.result_classes is not None:
        pred = pred.select(np.isin(pred.classes, rule.result_classes))
    for frame in range(1, length + 1):
        g, p = gt.at_frame(frame), pred.at_frame(frame)
        iou = box_iou_xywh(g.boxes, p.boxes)  # (n_gt, n_pred) before any filtering, as TrackEval
        if rule.distractors and len(g) and len(p):
            drop = _matched_to(iou, np.isin(g.classes, rule.distractors))
            p, iou = p.select(~drop), iou[:, ~drop]
        keep = g.scores != 0
        if rule.gt_classes is not None:
            keep &= np.isin(g.classes, rule.gt_classes)
        data["gt_ids"].append(g.ids[keep])
        data["tracker_ids"].append(p.ids)
        data["similarity_scores"].append(iou[keep])
    for side in ("gt", "tracker"):
        ids = data[f"{side}_ids"]
        unique = np.unique(np.concatenate(ids)) if ids else np.zeros(0, np.int64)
        data[f"{side}_ids"] = [np.searchsorted(unique, frame_ids) for frame_ids in ids]  # 0..n-1
        data[f"num_{side}_ids"] = len(unique)
        data[f"num_{side}_dets"] = int(sum(len(frame_ids) for frame_ids in ids))
    data["num_timesteps"] = length
    return data


def box_iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) left, top, width, height boxes -> (N, M)."""
    to_xyxy = lambda x: torch.from_numpy(np.concatenate([x[:, :2], x[:, :2] + x[:, 2:]], axis=1))  # noqa: E731
    return box_iou(to_xyxy(a), to_xyxy(b))[0].numpy().reshape(len(a), len(b))


def _matched_to(iou: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(M,) bool: predictions that the IoU >= 0.5 Hungarian matching pairs with a gt row where targets is True."""
    eps = np.finfo(float).eps
    score = np.where(iou >= MATCH_IOU - eps, iou, 0.0)
    rows, cols = linear_sum_assignment(-score)
    real = score[rows, cols] > eps
    drop = np.zeros(iou.shape[1], dtype=bool)
    drop[cols[real & targets[rows]]] = True
    return drop


def _results_file(results: str | os.PathLike, seq: str) -> Path:
    for candidate in (Path(results) / f"{seq}.txt", Path(results) / "data" / f"{seq}.txt"):
        if candidate.is_file():
            return candidate
    if not Path(results).is_dir():
        raise DataError(results, "results folder does not exist")
    raise DataError(results, f"no results for sequence {seq} (expected {Path(results) / (seq + '.txt')})")


def _combine_classes(metrics: list, by_name: dict[str, dict[str, Any]], by_class: bool) -> dict[str, Any]:
    """Several classes' results -> one, averaged over classes (by_class) or over detections."""
    if by_class:
        return {m.get_name(): m.combine_classes_class_averaged({k: v[m.get_name()] for k, v in by_name.items()},
                                                               ignore_empty_classes=True) for m in metrics}
    return {m.get_name(): m.combine_classes_det_averaged({k: v[m.get_name()] for k, v in by_name.items()})
            for m in metrics}


def _has_data(result: dict[str, dict[str, Any]]) -> bool:
    return result["Count"]["GT_Dets"] + result["Count"]["Dets"] > 0


def summarise(result: dict[str, dict[str, Any]], metrics: list) -> dict[str, float | int]:
    """trackeval results of one class -> flat {field: value}: the fields of each metric, the HOTA family
    averaged over its IoU thresholds as in TrackEval's summaries (its per-threshold counts are left out)."""
    flat: dict[str, float | int] = {}
    for metric in metrics:
        fields = result[metric.get_name()]
        for key in getattr(metric, "float_array_fields", []):
            flat[key] = float(np.mean(fields[key]))
        for key in getattr(metric, "float_fields", []):
            flat[key] = float(fields[key])
        for key in getattr(metric, "integer_fields", []):
            flat[key] = int(fields[key])
    return flat


def format_table(report: dict[str, Any]) -> str:
    """A text table: one row per sequence (every class together), then the overall rows per class and
    combined; fractions as percentages."""
    head = f"{'sequence':<24}{'class':<16}" + "".join(f"{_short(k):>9}" for k in HEADLINE)
    lines = [head, "-" * len(head)]
    together = "all" if len(report["classes"]) > 1 else report["classes"][0]
    rows = [(s, together, classes[together]) for s, classes in report["sequences"].items() if together in classes]
    rows += [("COMBINED", c, m) for c, m in report["combined"].items()]
    for seq, cls, m in rows:
        cells = "".join(f"{m[k]:>9d}" if isinstance(m[k], int) else f"{100 * m[k]:>9.2f}" for k in HEADLINE)
        lines.append(f"{seq[:23]:<24}{cls[:15]:<16}{cells}")
    return "\n".join(lines)


def _short(key: str) -> str:
    return {"CLR_FP": "FP", "CLR_FN": "FN"}.get(key, key)
