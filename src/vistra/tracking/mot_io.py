"""MOTChallenge files: the per-row text tables (gt.txt, det.txt, results) and a sequence's seqinfo.ini.

A row is ``frame, id, left, top, width, height, score, class, visibility[, ...]`` (comma or space separated):
- ground truth (gt/gt.txt): score is the "considered" flag (0 = ignore this box), class the MOTChallenge class
  (1 pedestrian, 2 person on vehicle, 7 static person, 8 distractor, 12 reflection, ...), visibility in [0, 1];
- results and detections: score is the confidence; columns 8.. are -1 in MOTChallenge's own files, and vistra
  writes the class id into column 8 (-1 = unknown), so multi-class trackers keep their classes.
Frames are 1-based. Missing trailing columns read as score 1, class -1, visibility -1.

Malformed rows (too few columns, text, NaN, frame < 1, a box with no width or height, an id repeated within
a frame) stop the reader with DataError("<file>: line N: <problem>"), or with skip_bad=True are dropped and
listed in ``MotTable.skipped``.
"""
from __future__ import annotations

import configparser
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vistra.data.errors import DataError, read_text_lines
from vistra.data.paths import inside_root

SEQINFO = "seqinfo.ini"
CLASSES_FILE = "classes.txt"  # optional, beside the sequences: "<id> <name>" per line (multi-class datasets)
_SPLIT = re.compile(r"[,\s]+")


@dataclass
class MotTable:
    """The rows of one MOTChallenge text file as aligned arrays (row i is entry i of each)."""

    frames: np.ndarray  # (N,) int64, 1-based
    ids: np.ndarray  # (N,) int64
    boxes: np.ndarray  # (N, 4) float64 left, top, width, height in pixels
    scores: np.ndarray  # (N,) float64: gt "considered" flag, or detection confidence
    classes: np.ndarray  # (N,) int64, -1 = unknown
    visibility: np.ndarray  # (N,) float64 in [0, 1], -1 = unknown
    skipped: list[str] = field(default_factory=list)  # "line N: problem" of rows dropped by skip_bad
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (N, ...) per-row fields of other formats

    @classmethod
    def empty(cls) -> MotTable:
        return cls.from_rows([])

    @classmethod
    def from_rows(cls, rows: Iterable[tuple]) -> MotTable:
        """Rows of (frame, id, left, top, width, height, score, class, visibility) -> table."""
        data = np.asarray(list(rows), dtype=np.float64).reshape(-1, 9)  # (N, 9)
        return cls(data[:, 0].astype(np.int64), data[:, 1].astype(np.int64), data[:, 2:6].copy(), data[:, 6].copy(),
                   data[:, 7].astype(np.int64), data[:, 8].copy())

    def __len__(self) -> int:
        return len(self.frames)

    def select(self, keep: np.ndarray) -> MotTable:
        """The rows where the (N,) bool mask (or index array) `keep` selects them."""
        return MotTable(self.frames[keep], self.ids[keep], self.boxes[keep], self.scores[keep], self.classes[keep],
                        self.visibility[keep], list(self.skipped), {k: v[keep] for k, v in self.extras.items()})

    def at_frame(self, frame: int) -> MotTable:
        return self.select(self.frames == frame)

    def xyxy(self) -> np.ndarray:
        """(N, 4) boxes as corners x0, y0, x1, y1."""
        return np.concatenate([self.boxes[:, :2], self.boxes[:, :2] + self.boxes[:, 2:]], axis=1)


def objects(values: list) -> np.ndarray:
    """(N,) object array of the values, whatever they are (strings, dicts): for MotTable.extras."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


@dataclass(frozen=True)
class GtFilter:
    """Which ground-truth rows to use: classes None keeps every class (rows of unknown class -1 always pass),
    min_visibility drops rows seen less (unknown visibility -1 passes), considered_only drops flag-0 rows."""

    classes: tuple[int, ...] | None = None
    min_visibility: float = 0.0
    considered_only: bool = True


MOT17_PEDESTRIANS = GtFilter(classes=(1,), min_visibility=0.0, considered_only=True)  # what MOT17 scores


def filter_gt(table: MotTable, rule: GtFilter) -> MotTable:
    """The rows of a ground-truth table that pass `rule`."""
    keep = np.ones(len(table), dtype=bool)
    if rule.classes is not None:
        keep &= np.isin(table.classes, rule.classes) | (table.classes < 0)
    if rule.min_visibility > 0:
        keep &= (table.visibility >= rule.min_visibility) | (table.visibility < 0)
    if rule.considered_only:
        keep &= table.scores != 0
    return table.select(keep)


def read_mot_txt(path: str | os.PathLike, skip_bad: bool = False) -> MotTable:
    """Read a MOTChallenge text file (gt.txt, det.txt or a results file); see the module doc for the columns."""
    path = Path(path)
    lines = read_text_lines(path, "MOTChallenge file")
    rows, skipped, seen = [], [], set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row, problem = _parse_row(line)
        if problem is None and (row[0], row[1]) in seen and row[1] >= 0:
            problem = f"id {int(row[1])} appears twice in frame {int(row[0])}"
        if problem is not None:
            if not skip_bad:
                raise DataError(path, f"line {number}: {problem} (pass skip_bad to drop such rows)")
            skipped.append(f"line {number}: {problem}")
            continue
        seen.add((row[0], row[1]))
        rows.append(row)
    table = MotTable.from_rows(rows)
    table.skipped = skipped
    return table


def _parse_row(line: str) -> tuple[tuple, str | None]:
    """One text line -> ((frame, id, left, top, width, height, score, class, visibility), problem or None)."""
    parts = [p for p in _SPLIT.split(line.strip()) if p]
    if len(parts) < 6:
        return (), f"expected at least 6 columns (frame, id, left, top, width, height), found {len(parts)}"
    try:
        values = [float(p) for p in parts[:9]]
    except ValueError:
        return (), f"not a number in {line.strip()!r}"
    if not np.all(np.isfinite(values)):
        return (), f"NaN or infinite value in {line.strip()!r}"
    values += [1.0, -1.0, -1.0][len(values) - 6:]  # default score, class, visibility
    frame, track, _, _, width, height = values[:6]
    if frame < 1 or frame != int(frame) or track != int(track):
        return (), f"frame must be an integer >= 1 and id an integer, got frame {frame:g}, id {track:g}"
    if width <= 0 or height <= 0:
        return (), f"box with no area (width {width:g}, height {height:g})"
    return tuple(values), None


def write_mot_txt(path: str | os.PathLike, table: MotTable, gt: bool = False) -> Path:
    """Write `table` sorted by frame and id, atomically. gt=True: the 9 gt columns (frame, id, box, flag,
    class, visibility); else the 10 results columns (frame, id, box, score, class, -1, -1, -1 ... with the
    class in column 8). Boxes and scores are written with 2 and 4 decimals."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    order = np.lexsort((table.ids, table.frames))
    lines = []
    for i in order:
        left, top, width, height = table.boxes[i]
        head = f"{table.frames[i]},{table.ids[i]},{left:.2f},{top:.2f},{width:.2f},{height:.2f}"
        if gt:
            lines.append(f"{head},{table.scores[i]:g},{table.classes[i]},{table.visibility[i]:.4g}")
        else:
            lines.append(f"{head},{table.scores[i]:.4f},{table.classes[i]},-1,-1")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    os.replace(tmp, path)
    return path


# ------------------------------------------------------------------------------------------ sequences
@dataclass(frozen=True)
class SeqInfo:
    """The [Sequence] section of a seqinfo.ini."""

    name: str
    length: int  # number of frames
    frame_rate: float = 30.0
    width: int = 0
    height: int = 0
    im_dir: str = "img1"
    im_ext: str = ".jpg"

    def frame_path(self, seq_dir: str | os.PathLike, frame: int) -> Path:
        """Where frame `frame` (1-based) of the sequence is stored: seq_dir/img1/000001.jpg."""
        return Path(seq_dir) / self.im_dir / f"{frame:06d}{self.im_ext}"


def read_seqinfo(seq_dir: str | os.PathLike, allow_outside_root: bool = False) -> SeqInfo:
    """seq_dir/seqinfo.ini -> SeqInfo; DataError when it is missing or lacks seqLength, when imExt is not a file
    extension, or when imDir leaves the sequence folder (absolute, or climbing out with ``..``) unless
    allow_outside_root."""
    path = Path(seq_dir) / SEQINFO
    parser = configparser.ConfigParser()
    try:
        if not parser.read(path):
            raise DataError(path, "missing; a MOTChallenge sequence folder holds seqinfo.ini, img1/ and gt/gt.txt")
        section = parser["Sequence"]
        info = SeqInfo(name=section.get("name", Path(seq_dir).name), length=int(section["seqLength"]),
                       frame_rate=float(section.get("frameRate", 30)), width=int(section.get("imWidth", 0)),
                       height=int(section.get("imHeight", 0)), im_dir=section.get("imDir", "img1"),
                       im_ext=section.get("imExt", ".jpg"))
    except (configparser.Error, KeyError, ValueError) as err:
        raise DataError(path, f"not a valid seqinfo.ini ({' '.join(str(err).split())})") from None
    if not re.fullmatch(r"\.\w+", info.im_ext):
        raise DataError(path, f"imExt {info.im_ext!r} is not a file extension such as .jpg")
    inside_root(seq_dir, info.im_dir, path, "imDir", allow_outside_root)
    return info


def write_seqinfo(seq_dir: str | os.PathLike, info: SeqInfo) -> Path:
    """Write seq_dir/seqinfo.ini in MOTChallenge's layout."""
    path = Path(seq_dir) / SEQINFO
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[Sequence]\nname={info.name}\nimDir={info.im_dir}\nframeRate={info.frame_rate:g}\n"
                    f"seqLength={info.length}\nimWidth={info.width}\nimHeight={info.height}\nimExt={info.im_ext}\n")
    return path


def find_sequences(root: str | os.PathLike) -> list[Path]:
    """The sequence folders under `root` (root itself when it holds seqinfo.ini), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "MOTChallenge folder does not exist")
    if (root / SEQINFO).is_file():
        return [root]
    found = sorted(p for p in root.iterdir() if (p / SEQINFO).is_file())
    if not found:
        raise DataError(root, "holds no MOTChallenge sequence (no <sequence>/seqinfo.ini)")
    return found


def read_gt(seq_dir: str | os.PathLike, rule: GtFilter | None = None, skip_bad: bool = False) -> MotTable:
    """A sequence's seq_dir/gt/gt.txt, filtered by `rule` (None: every row); rows past seqLength are malformed."""
    info = read_seqinfo(seq_dir, allow_outside_root=True)  # only its length is used here; imDir is checked where
    path = Path(seq_dir) / "gt" / "gt.txt"                  # the frames are read
    table = read_mot_txt(path, skip_bad=skip_bad)
    late = table.frames > info.length
    if late.any():
        problem = f"{int(late.sum())} row(s) after the last frame {info.length} of seqinfo.ini (first: frame " \
                  f"{int(table.frames[late][0])})"
        if not skip_bad:
            raise DataError(path, problem)
        table.skipped += [f"frame {f}, id {i}: after the last frame {info.length} of seqinfo.ini"
                          for f, i in zip(table.frames[late], table.ids[late])]
        table = table.select(~late)
    return filter_gt(table, rule) if rule is not None else table


def read_class_names(root: str | os.PathLike) -> dict[int, str] | None:
    """{class id: name} from root/classes.txt ("<id> <name>" per line), or None when there is no such file."""
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        return None
    names = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, _, name = line.strip().partition(" ")
        if not key.lstrip("-").isdigit() or not name.strip():
            raise DataError(path, f"line {number}: expected '<class id> <name>', got {line.strip()!r}")
        names[int(key)] = name.strip()
    return names


def write_class_names(root: str | os.PathLike, names: dict[int, str]) -> Path:
    path = Path(root) / CLASSES_FILE
    path.write_text("".join(f"{k} {v}\n" for k, v in sorted(names.items())))
    return path
