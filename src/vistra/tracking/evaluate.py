"""HOTA, CLEAR-MOT (MOTA, MOTP, IDSW, ...) and Identity (IDF1, ...) scores of tracking results, computed by the
`trackeval` package's metric classes on sequences vistra reads itself.

vistra reads the files (so malformed rows get a file-and-line error, or a counted skip) and prepares each
sequence the way the official evaluation does (vistra.tracking.eval_rules: TrackEval's MotChallenge2DBox and
Kitti2DBox, the UA-DETRAC toolkit's ignored regions), then hands the per-frame IDs and IoUs to trackeval.metrics.
Reading ourselves is also what lets multi-class datasets be scored per class, which TrackEval's MOTChallenge
reader refuses (pedestrians only). trackeval 1.3 uses no NumPy alias removed in NumPy 2, so no compatibility
shim is needed.

Modes, by the ground truth's format (vistra.tracking.datasets):
- MOTChallenge (no classes.txt): pedestrians (class 1) are scored; predictions matched (IoU >= 0.5) to a
  distractor (classes 2, 7, 8, 12) are removed first; gt rows with flag 0 are ignored. Result classes are unused.
- multi-class MOTChallenge (GT_ROOT/classes.txt): each class is scored on its own (gt and results of that class),
  then combined over classes averaged by detections ("all") and by class ("class_averaged").
- KITTI tracking: Car and Pedestrian (or the classes asked for), each with KITTI's distractors, occlusion /
  truncation limits and DontCare regions, combined as above.
- UA-DETRAC: each vehicle type, boxes mostly inside the ignored regions left out, combined as above.
- class_agnostic: every considered gt row against every result row, one class "all".
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from vistra.atomic_io import write_json_atomic
from vistra.data.errors import DataError

from .datasets import detect_format, open_sequences
from .eval_rules import (  # noqa: F401
    ClassRule,
    box_iou_xywh,
    class_rules,
    format_rules,
    select_rules,
    sequence_data,  # (ClassRule, box_iou_xywh: re-exported)
)
from .results import read_results

HEADLINE = ("HOTA", "DetA", "AssA", "MOTA", "MOTP", "IDF1", "IDSW", "CLR_FP", "CLR_FN", "GT_IDs", "IDs")
METRICS_FILE = "track_metrics.json"


def evaluate_tracking(gt_root: str | os.PathLike, results: str | os.PathLike, class_agnostic: bool = False,
                      skip_bad: bool = False, out_json: str | os.PathLike | None = None, format: str | None = None,
                      class_map: Mapping[str, str] | str | None = None, classes: list[str] | None = None
                      ) -> dict[str, Any]:
    """Score the results of every sequence under gt_root (a MOTChallenge, KITTI tracking or UA-DETRAC folder;
    format None: detected from the folder). Results: RESULTS/<sequence>.txt or RESULTS/data/<sequence>.txt, MOT
    rows with the class id in column 8 or (KITTI) label_02 rows, or (UA-DETRAC) RESULTS/<sequence>.xml.

    class_map: renames gt (and KITTI / UA-DETRAC results) class names, see vistra.tracking.datasets; classes:
    the class names to score (KITTI: Car and Pedestrian by default; else every class).
    Returns {"sequences": {seq: {class: metrics}}, "combined": {class: metrics, ("all", "class_averaged" when
    multi-class)}, "classes": [...], "format", "skipped": ["<file>: line N: problem", ...], "notes": [...]};
    metrics are flat dicts of TrackEval fields (HOTA family averaged over its IoU thresholds, as TrackEval's
    summaries), fractions in [0, 1] and counts. out_json: also write that dict there.
    """
    import trackeval  # lazy: only evaluation needs it

    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
               trackeval.metrics.Identity({"PRINT_CONFIG": False}), trackeval.metrics.Count()]
    format = format or detect_format(gt_root)
    sequences = open_sequences(gt_root, format, class_map, skip_bad)
    if format == "mot":
        rules = select_rules(class_rules(gt_root, class_agnostic, sequences[0].classes if class_map else None), classes)
    else:
        rules = format_rules(format, sequences[0].classes, class_agnostic, classes)
    per_seq: dict[str, dict[str, dict[str, dict]]] = {}  # seq -> class -> metric -> raw trackeval result
    skipped: list[str] = []
    notes: list[str] = []
    for seq in sequences:
        pred, found = read_results(results, seq, class_map, skip_bad)
        skipped += seq.skipped + [f"{found}: {s}" for s in pred.skipped]
        notes += seq.notes
        late = pred.frames > seq.length
        if late.any():
            raise DataError(found, f"results for frame {int(pred.frames[late].max())}, but the sequence has "
                                   f"{seq.length} frames")
        per_seq[seq.name] = {}
        for rule in rules:
            data = sequence_data(seq.gt, pred, seq.length, rule, seq.ignore_regions)
            per_seq[seq.name][rule.name] = {m.get_name(): m.eval_sequence(data) for m in metrics}
    combined = {r.name: {m.get_name(): m.combine_sequences({s: c[r.name][m.get_name()] for s, c in per_seq.items()})
                         for m in metrics} for r in rules}
    if len(rules) > 1:  # per sequence and overall: every class together, weighted by detections
        for by_class in (*per_seq.values(), combined):
            by_class["all"] = _combine_classes(metrics, {r.name: by_class[r.name] for r in rules}, by_class=False)
        combined["class_averaged"] = _combine_classes(metrics, {r.name: combined[r.name] for r in rules}, True)
    report = {"gt_root": str(gt_root), "results": str(results), "format": format, "classes": [r.name for r in rules],
              "sequences": {s: {c: summarise(m, metrics) for c, m in by_class.items() if _has_data(m)}
                            for s, by_class in per_seq.items()},
              "combined": {c: summarise(m, metrics) for c, m in combined.items() if _has_data(m)}, "skipped": skipped,
              "notes": notes}
    if out_json is not None:
        write_json_atomic(out_json, report)
    return report


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
