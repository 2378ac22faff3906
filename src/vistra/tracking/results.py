"""Tracking results files for one ground-truth sequence, in whichever format they come.

RESULTS/<seq>.txt or RESULTS/data/<seq>.txt (TrackEval's tracker layout) holds either MOTChallenge rows (what
`vistra track` writes: class id in column 8, in the dataset's class ids) or KITTI label_02 rows (a type name
in column 3, the score in column 18; told apart by that name); RESULTS/<seq>.xml is UA-DETRAC XML. Class names
(KITTI, UA-DETRAC) are turned into the sequence's class ids with the same class map as the ground truth, and so
are MOTChallenge class ids when the ground truth is MOTChallenge (mapping ids already mapped changes nothing).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vistra.data.errors import DataError

from . import detrac_io, kitti_io
from .datasets import DROP, IGNORE, ClassTable, TrackingSequence, mot_names, parse_class_map
from .mot_io import MotTable, read_mot_txt


def results_file(results: str | os.PathLike, seq: str) -> Path:
    """The results file of sequence `seq` under the results folder."""
    folder = Path(results)
    for candidate in (folder / f"{seq}.txt", folder / "data" / f"{seq}.txt", folder / f"{seq}.xml",
                      folder / "data" / f"{seq}.xml"):
        if candidate.is_file():
            return candidate
    if not folder.is_dir():
        raise DataError(results, "results folder does not exist")
    raise DataError(results, f"no results for sequence {seq} (expected {folder / (seq + '.txt')})")


def read_results(results: str | os.PathLike, seq: TrackingSequence,
                 class_map: Mapping[str, str] | str | None = None, skip_bad: bool = False) -> tuple[MotTable, Path]:
    """(results as a MotTable with 1-based frames and the sequence's class ids, the file read)."""
    path = results_file(results, seq.name)
    if path.suffix == ".xml":
        return _named(detrac_io.read_detrac_xml(path, skip_bad).table, path, seq, class_map, skip_bad), path
    if _is_kitti(path):
        return _named(kitti_io.read_kitti_labels(path, skip_bad).table, path, seq, class_map, skip_bad), path
    table = read_mot_txt(path, skip_bad=skip_bad)
    if seq.format == "mot" and class_map and seq.folder is not None:  # the gt's ids were mapped: map these alike
        ids = ClassTable("mot", parse_class_map(class_map), mot_names(seq.folder.parent)).mot_ids
        targets = [ids.get(int(c), int(c)) for c in table.classes]
        table.classes = np.array([t if isinstance(t, int) else -1 for t in targets], dtype=np.int64)
        table = table.select(np.array([t not in (IGNORE, DROP) for t in targets], dtype=bool))
    return table, path


def _is_kitti(path: Path) -> bool:
    """Whether a results text file holds KITTI rows: a name in the third column of its first row."""
    with open(path, errors="replace") as f:
        for line in f:
            parts = line.split()
            if parts:
                return len(parts) >= 10 and not parts[2].lstrip("+-").replace(".", "", 1).isdigit()
    return False


def _named(table: MotTable, path: Path, seq: TrackingSequence, class_map: Mapping[str, str] | str | None,
           skip_bad: bool) -> MotTable:
    """Rows with class names (extras "type") -> class ids of the sequence; unknown names are bad rows."""
    classes = ClassTable(seq.format, parse_class_map(class_map),
                          seq.classes if seq.format == "mot" else None)
    targets = [classes.resolve(n) for n in table.extras["type"]]
    keep = np.array([t not in (IGNORE, DROP) for t in targets], dtype=bool)
    for i, target in enumerate(targets):
        if target is None:
            problem = f"line {table.extras['line'][i]}: {classes.unknown(table.extras['type'][i])}"
            if not skip_bad:
                raise DataError(path, problem)
            table.skipped.append(problem)
            keep[i] = False
    table.classes = np.array([t if isinstance(t, int) else -1 for t in targets], dtype=np.int64)
    return table.select(keep)
