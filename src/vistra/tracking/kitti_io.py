"""KITTI tracking files: the label_02 text tables (ground truth and results) and the dataset's folder layout.

Layout: ROOT/image_02/<seq>/000000.png ... and ROOT/label_02/<seq>.txt (ROOT may also hold them one level down,
in training/), optionally ROOT/evaluate_tracking.seqmap.* ("<seq> empty <first> <count>" lines).

A row is ``frame track_id type truncated occluded alpha left top right bottom height width length x y z
rotation_y [score]`` separated by spaces: frames are 0-based, the box is corners in pixels, type one of
KITTI_TYPES or DontCare (a region to ignore, track id -1), truncated 0..2 (or a fraction), occluded 0..3,
the 3-D fields (alpha .. rotation_y) are kept as they are. Results files carry the score as column 18.
Rows with only the first 10 columns (no 3-D fields) are accepted too.

Readers return frames 1-based (file frame + 1), as every vistra table. Malformed rows (wrong column count,
text where a number belongs, a box with no area, a track id twice in a frame) stop the reader with
DataError("<file>: line N: <problem>"), or with skip_bad=True are dropped and listed in ``skipped``.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vistra.data.errors import DataError, read_text_lines

from .mot_io import MotTable, objects

KITTI_TYPES = ("Car", "Van", "Truck", "Pedestrian", "Person", "Cyclist", "Tram", "Misc")  # ids 1..8, as TrackEval
DONTCARE = "DontCare"
ALIASES = {"person_sitting": "Person"}  # KITTI object detection's name for KITTI tracking's sitting "Person"
LABEL_DIR, IMAGE_DIR, SEQMAP_GLOB = "label_02", "image_02", "evaluate_tracking.seqmap*"
NO_3D = (-10.0, -1.0, -1.0, -1.0, -1000.0, -1000.0, -1000.0, -10.0)  # alpha, h, w, l, x, y, z, rotation_y unknown
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass
class KittiLabels:
    """One label_02 file: the object rows and the DontCare regions.

    table: MotTable with 1-based frames, boxes as left, top, width, height, scores (the results' score, 1 for
    ground truth), classes -1 (names are in extras) and extras "type" (N,) str, "line" (N,) int, "truncated" (N,)
    float, "occluded" (N,) int, "kitti_3d" (N, 8) alpha, h, w, l, x, y, z, rotation_y.
    dontcare: {frame (1-based): (k, 4) left, top, width, height} of the DontCare rows.
    """

    table: MotTable
    dontcare: dict[int, np.ndarray]
    skipped: list[str] = field(default_factory=list)


def kitti_type(name: str) -> str | None:
    """The KITTI tracking spelling of a class name (case-insensitive, Person_sitting -> Person), None when
    it is no KITTI type."""
    low = name.lower()
    return ALIASES.get(low) or next((t for t in (*KITTI_TYPES, DONTCARE) if t.lower() == low), None)


def read_kitti_labels(path: str | os.PathLike, skip_bad: bool = False) -> KittiLabels:
    """Read a label_02 file (ground truth or results); see the module doc for the columns."""
    path = Path(path)
    lines = read_text_lines(path, "KITTI label file")
    rows, types, numbers, extra, dontcare, skipped, seen = [], [], [], [], {}, [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parsed, problem = _parse_row(line)
        ignore = problem is None and kitti_type(parsed["type"]) == DONTCARE
        if problem is None and not ignore and (parsed["frame"], parsed["id"]) in seen:
            problem = f"track id {parsed['id']} appears twice in frame {parsed['frame'] - 1}"
        if problem is not None:
            if not skip_bad:
                raise DataError(path, f"line {number}: {problem} (pass skip_bad to drop such rows)")
            skipped.append(f"line {number}: {problem}")
            continue
        if ignore:
            dontcare.setdefault(parsed["frame"], []).append(parsed["box"])
            continue
        seen.add((parsed["frame"], parsed["id"]))
        rows.append((parsed["frame"], parsed["id"], *parsed["box"], parsed["score"], -1, -1))
        types.append(parsed["type"])
        numbers.append(number)
        extra.append((parsed["truncated"], parsed["occluded"], *parsed["kitti_3d"]))
    table = MotTable.from_rows(rows)
    extra_array = np.asarray(extra, dtype=np.float64).reshape(-1, 10)  # (N, 10) truncated, occluded, 3-D fields
    table.extras = {"type": objects(types), "line": np.asarray(numbers, dtype=np.int64),
                    "truncated": extra_array[:, 0], "occluded": extra_array[:, 1].astype(np.int64),
                    "kitti_3d": extra_array[:, 2:]}
    regions = {f: np.asarray(b, dtype=np.float64).reshape(-1, 4) for f, b in dontcare.items()}
    return KittiLabels(table, regions, skipped)


def _parse_row(line: str) -> tuple[dict, str | None]:
    """One text line -> ({frame (1-based), id, type, box (left, top, width, height), truncated, occluded,
    kitti_3d, score}, problem or None)."""
    parts = line.split()
    if len(parts) not in (10, 17, 18):
        return {}, f"expected 17 columns (frame, track id, type, truncated, occluded, alpha, 4 box corners, 7 3-D " \
                   f"fields; 18 with a score), found {len(parts)}"
    if _NUMBER.match(parts[2]):
        return {}, f"column 3 must be the object type (Car, Pedestrian, ..., DontCare), found {parts[2]!r}"
    try:
        values = [float(p) for i, p in enumerate(parts) if i != 2]
    except ValueError:
        return {}, f"not a number in {line.strip()!r}"
    if not np.all(np.isfinite(values)):
        return {}, f"NaN or infinite value in {line.strip()!r}"
    frame, track, truncated, occluded, _, left, top, right, bottom = values[:9]
    if frame < 0 or frame != int(frame) or track != int(track) or occluded != int(occluded):
        return {}, f"frame must be an integer >= 0, track id and occluded integers, got frame {frame:g}, " \
                   f"track id {track:g}, occluded {occluded:g}"
    if right <= left or bottom <= top:
        return {}, f"box with no area (left {left:g}, top {top:g}, right {right:g}, bottom {bottom:g})"
    if track < 0 and kitti_type(parts[2]) != DONTCARE:
        return {}, f"negative track id {track:g} on a {parts[2]} row (only DontCare rows have track id -1)"
    kitti_3d = (values[4], *values[9:16]) if len(values) >= 16 else (values[4], *NO_3D[1:])
    return {"frame": int(frame) + 1, "id": int(track), "type": parts[2], "box": (left, top, right - left, bottom - top),
            "truncated": truncated, "occluded": int(occluded), "kitti_3d": kitti_3d,
            "score": values[16] if len(values) == 17 else 1.0}, None


def write_kitti_labels(path: str | os.PathLike, table: MotTable, type_names: Mapping[int, str],
                       dontcare: Mapping[int, np.ndarray] | None = None, results: bool = False) -> Path:
    """Write `table` (1-based frames, class ids named by type_names: KITTI types) as a label_02 file sorted by
    frame and id, with the DontCare regions (track id -1). Ground truth keeps the table's extras "truncated",
    "occluded" and "kitti_3d" when it has them (else 0, 0 and the unknown 3-D values); results=True writes the
    devkit's results rows: truncated and occluded -1, unknown 3-D values, the score as column 18."""
    path = Path(path)
    unknown = sorted({int(c) for c in table.classes if int(c) not in type_names})
    if unknown:
        raise DataError(path, f"class id(s) {unknown} have no KITTI type name")
    n = len(table)
    truncated = table.extras.get("truncated", np.zeros(n))
    occluded = table.extras.get("occluded", np.zeros(n, dtype=np.int64))
    kitti_3d = table.extras.get("kitti_3d", np.tile(NO_3D, (n, 1)))  # (N, 8)
    lines = []
    for frame in sorted({*table.frames.tolist(), *(dontcare or {})}):
        for left, top, width, height in (dontcare or {}).get(frame, np.zeros((0, 4))):
            lines.append(f"{frame - 1} -1 {DONTCARE} -1 -1 -10 {_box(left, top, width, height)} {_nums(NO_3D[1:])}")
        rows = np.flatnonzero(table.frames == frame)
        for i in rows[np.argsort(table.ids[rows], kind="stable")]:
            head = f"{frame - 1} {table.ids[i]} {type_names[int(table.classes[i])]}"
            if results:
                lines.append(f"{head} -1 -1 -10 {_box(*table.boxes[i])} {_nums(NO_3D[1:])} {table.scores[i]:.4f}")
            else:
                alpha, *rest = kitti_3d[i]
                lines.append(f"{head} {_nums([truncated[i]])} {int(occluded[i])} {_nums([alpha])} "
                             f"{_box(*table.boxes[i])} {_nums(rest)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)
    return path


def _box(left: float, top: float, width: float, height: float) -> str:
    """left, top, width, height -> the file's 'left top right bottom'."""
    return _nums([left, top, left + width, top + height])


def _nums(values) -> str:
    """Numbers as the KITTI files write them: up to 6 decimals, trailing zeros dropped."""
    return " ".join(f"{float(v):.6f}".rstrip("0").rstrip(".") for v in values)


# ------------------------------------------------------------------------------------------- layout
def kitti_root(path: str | os.PathLike) -> Path | None:
    """The folder holding label_02/ (path itself or path/training), or None when path is no KITTI tracking root."""
    path = Path(path)
    for candidate in (path, path / "training"):
        if (candidate / LABEL_DIR).is_dir():
            return candidate
    return None


def kitti_sequences(root: Path) -> list[str]:
    """The sequence names of a KITTI root (its label_02/<seq>.txt files), sorted."""
    return sorted(p.stem for p in (root / LABEL_DIR).glob("*.txt"))


def read_seqmap_lengths(root: Path) -> dict[str, int]:
    """{sequence: frame count} from the root's evaluate_tracking.seqmap.* files (first file listing it wins)."""
    lengths: dict[str, int] = {}
    for path in sorted(root.glob(SEQMAP_GLOB)):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 4 or not parts[3].isdigit():
                raise DataError(path, f"line {number}: expected '<sequence> empty <first frame> <frame count>', "
                                      f"got {line.strip()!r}")
            lengths.setdefault(parts[0], int(parts[3]))
    return lengths


def write_seqmap(root: str | os.PathLike, lengths: Mapping[str, int], split: str = "training") -> Path:
    """ROOT/evaluate_tracking.seqmap.<split>: one '<seq> empty 000000 <count>' line per sequence."""
    path = Path(root) / f"evaluate_tracking.seqmap.{split}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{seq} empty 000000 {count:06d}\n" for seq, count in sorted(lengths.items())))
    return path
