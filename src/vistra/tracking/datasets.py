"""Tracking datasets in any of the formats vistra reads, as one kind of object: MOTChallenge (mot_io), KITTI
tracking (kitti_io) and UA-DETRAC (detrac_io).

`open_sequences(root)` detects the format from the folder (or takes `format`) and returns TrackingSequence
objects: ground truth with 1-based frames and class ids, the regions to ignore, the frame files. Class ids are
fixed per format, so that every sequence, training run and results file agrees on them:
- KITTI: Car 1, Van 2, Truck 3, Pedestrian 4, Person (sitting) 5, Cyclist 6, Tram 7, Misc 8 (TrackEval's ids);
  DontCare rows become per-frame ignore regions;
- UA-DETRAC: car 1, bus 2, van 3, others 4; the ignored regions apply to every frame;
- MOTChallenge: the ids of classes.txt beside the sequences, else MOT17's classes (pedestrian 1, ...); rows with
  id -1 and flag 0 are ignore regions (what vistra writes for DontCare / ignored regions).

A class map ({name: target}; `--class-map "Taxi=car,Misc=ignore"` or a file of such lines) renames classes
before ids are given: a target is a class name (new names get ids after the format's own, mapped-away names lose
theirs), `ignore` or DontCare (the boxes become ignore regions) or `drop`. Names are compared case-insensitively.

Bad input stops with DataError naming the file and line, or with skip_bad is dropped and listed in `skipped`:
class names that are neither known nor mapped (the error lists the known ones), a track id reused for another
class within a sequence (KITTI, UA-DETRAC), boxes entirely outside the image, rows after the last frame. Boxes
partly outside the image are clipped to it and counted in `notes`. MOTChallenge ground truth is read as
mot_io.read_gt reads it, unchanged.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vistra.data.errors import DataError
from vistra.data.image_folder import IMG_EXTENSIONS

from . import detrac_io, kitti_io, mot_io
from .mot_io import MotTable

FORMATS = ("mot", "kitti", "detrac")
MOT17_CLASSES = {1: "pedestrian", 2: "person_on_vehicle", 3: "car", 4: "bicycle", 5: "motorbike",
                 6: "non_mot_vehicle", 7: "static_person", 8: "distractor", 9: "occluder", 10: "occluder_on_ground",
                 11: "occluder_full", 12: "reflection", 13: "crowd"}
IGNORE, DROP = "ignore", "drop"  # class-map targets besides class names
FRAME_RATES = {"kitti": 10.0, "detrac": 25.0}


@dataclass
class TrackingSequence:
    """One annotated sequence, whatever its format.

    gt: MotTable of the ground truth, frames 1-based, class ids keys of `classes`, the format's extra fields in
    gt.extras (KITTI truncated / occluded / kitti_3d, UA-DETRAC attributes). ignored: (k, 4) left, top, width,
    height regions ignored in every frame; ignored_by_frame: {frame: (k, 4)} regions of single frames.
    frames: {frame: image file} (empty when the annotations come without images). width / height 0: unknown.
    """

    name: str
    format: str
    length: int
    gt: MotTable
    classes: dict[int, str]
    source: Path  # the annotation file
    frames: dict[int, Path] = field(default_factory=dict)
    width: int = 0
    height: int = 0
    frame_rate: float = 30.0
    ignored: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    ignored_by_frame: dict[int, np.ndarray] = field(default_factory=dict)
    folder: Path | None = None  # MOTChallenge: the sequence folder (seqinfo.ini); else the frame folder
    attributes: dict[str, str] = field(default_factory=dict)  # UA-DETRAC: camera_state, sence_weather
    skipped: list[str] = field(default_factory=list)  # "<file>: line N: problem" of rows dropped (skip_bad)
    notes: list[str] = field(default_factory=list)  # repairs, e.g. "<file>: 3 boxes clipped to the image"

    def ignore_regions(self, frame: int) -> np.ndarray:
        """(k, 4) left, top, width, height regions to ignore in `frame`."""
        single = self.ignored_by_frame.get(frame)
        return self.ignored if single is None else np.concatenate([self.ignored, single])

    def frame_path(self, frame: int) -> Path:
        if frame not in self.frames:
            raise DataError(self.folder or self.source, f"sequence {self.name} has no image for frame {frame}")
        return self.frames[frame]


# ------------------------------------------------------------------------------------------ formats
def detect_format(root: str | os.PathLike) -> str:
    """'mot', 'kitti' or 'detrac': the layout of the dataset folder `root` (see the format modules' docs)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "tracking dataset folder does not exist")
    if (root / mot_io.SEQINFO).is_file() or any((p / mot_io.SEQINFO).is_file() for p in root.iterdir()):
        return "mot"
    if kitti_io.kitti_root(root) is not None:
        return "kitti"
    if detrac_io.detrac_annotation_dir(root) is not None:
        return "detrac"
    raise DataError(root, "is no tracking dataset folder: expected MOTChallenge sequences (<seq>/seqinfo.ini), "
                          "KITTI tracking (label_02/<seq>.txt, image_02/<seq>/) or UA-DETRAC (<seq>.xml, "
                          "Insight-MVT_Annotation_*/<seq>/)")


def parse_class_map(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """{name: target} from 'a=b,c=d', a file of 'a=b' lines ('#' comments), or a mapping; {} for None."""
    if spec is None or isinstance(spec, Mapping):
        return dict(spec or {})
    path = Path(spec)
    lines = path.read_text().splitlines() if path.is_file() else [spec]
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        for item in line.split("#", 1)[0].split(","):
            if not item.strip():
                continue
            key, sep, value = (part.strip() for part in item.partition("="))
            if not sep or not key or not value:
                where = f"line {number}: " if path.is_file() else ""
                raise DataError(path if path.is_file() else "class map", f"{where}expected NAME=TARGET, got "
                                                                         f"{item.strip()!r}")
            found[key] = value
    return found


def class_names(format: str, class_map: Mapping[str, str] | str | None = None,
                root: str | os.PathLike | None = None) -> dict[int, str]:
    """{class id: name} of a format under a class map (MOTChallenge: read from root's classes.txt)."""
    known = mot_names(Path(root)) if format == "mot" and root is not None else None
    return ClassTable(format, parse_class_map(class_map), known).names


class ClassTable:
    """A format's class names after a class map: names {id: name} and lookup {lower-case name: id, IGNORE, DROP}."""

    def __init__(self, format: str, class_map: Mapping[str, str], mot_names: dict[int, str] | None = None):
        known = {"kitti": dict(enumerate(kitti_io.KITTI_TYPES, start=1)),
                 "detrac": dict(enumerate(detrac_io.DETRAC_TYPES, start=1))}.get(format) or dict(mot_names or {})
        self.known = list(known.values())
        spell = {n.lower(): n for n in self.known}
        targets = {k.lower(): IGNORE if v.lower() == "dontcare" else spell.get(v.lower(), v)
                   for k, v in class_map.items()}
        self.names: dict[int, str] = {}
        self.lookup: dict[str, int | str] = {}
        if format == "mot" or not targets:
            self.names = {cid: targets.get(n.lower(), n) for cid, n in sorted(known.items())}
        else:  # renumbered from 1: the format's names as mapped, then the map's new names
            order = [targets.get(n.lower(), n) for n in self.known] + list(targets.values())
            order = [n for n in dict.fromkeys(order) if n.lower() not in (IGNORE, DROP)]
            self.names = dict(enumerate(order, start=1))
        first = {}
        for cid, name in self.names.items():
            if name.lower() not in (IGNORE, DROP):
                first.setdefault(name.lower(), cid)
        self.names = {cid: n for cid, n in self.names.items() if first.get(n.lower()) == cid}  # merged: first id
        for source in [*self.known, *class_map]:
            target = targets.get(source.lower(), source).lower()
            if target in (IGNORE, DROP) or target in first:  # (MOTChallenge: a map of unknown names is unused)
                self.lookup[source.lower()] = target if target in (IGNORE, DROP) else first[target]
        if format == "kitti":
            for alias, name in kitti_io.ALIASES.items():
                self.lookup.setdefault(alias, self.lookup[name.lower()])
        self.mot_ids = {cid: self.lookup[n.lower()] for cid, n in known.items()} if format == "mot" else {}

    def resolve(self, name: str) -> int | str | None:
        return self.lookup.get(name.lower())

    def unknown(self, name: str) -> str:
        return f"unknown class {name!r}; known: {', '.join(self.known)} (map other names with --class-map " \
               f"{name}=NAME, or {name}=ignore / {name}=drop)"


# ---------------------------------------------------------------------------------------- sequences
def open_sequences(root: str | os.PathLike, format: str | None = None,
                   class_map: Mapping[str, str] | str | None = None, skip_bad: bool = False,
                   allow_outside_root: bool = False) -> list[TrackingSequence]:
    """Every annotated sequence under root, sorted by name; see the module doc. allow_outside_root: accept a
    MOTChallenge seqinfo.ini whose imDir leaves its sequence folder."""
    root = Path(root)
    format = format or detect_format(root)
    if format not in FORMATS:
        raise ValueError(f"unknown tracking format {format!r}; known: {', '.join(FORMATS)}")
    mapping = parse_class_map(class_map)
    if format == "mot":
        return _open_mot(root, mapping, skip_bad, allow_outside_root)
    table = ClassTable(format, mapping)
    opened = _open_kitti(root, skip_bad) if format == "kitti" else _open_detrac(root, skip_bad)
    sequences = [_finish(seq, table, skip_bad) for seq in opened]
    if not sequences:
        raise DataError(root, f"holds no {format} sequence")
    return sequences


def mot_names(root: Path) -> dict[int, str]:
    """classes.txt of a MOTChallenge root (or of the folder above a single sequence), else MOT17's classes."""
    return mot_io.read_class_names(root) or (mot_io.read_class_names(root.parent)
                                             if (root / mot_io.SEQINFO).is_file() else None) or dict(MOT17_CLASSES)


def _open_mot(root: Path, class_map: Mapping[str, str], skip_bad: bool,
              allow_outside_root: bool = False) -> list[TrackingSequence]:
    table = ClassTable("mot", class_map, mot_names(root))
    sequences = []
    for seq_dir in mot_io.find_sequences(root):
        info = mot_io.read_seqinfo(seq_dir, allow_outside_root)
        gt_file = seq_dir / "gt" / "gt.txt"
        gt = mot_io.read_gt(seq_dir, skip_bad=skip_bad)
        regions = (gt.ids < 0) & (gt.scores == 0)
        by_frame = {int(f): gt.boxes[regions & (gt.frames == f)] for f in np.unique(gt.frames[regions])}
        gt = gt.select(~regions)
        seq = TrackingSequence(seq_dir.name, "mot", info.length, gt, table.names, gt_file, width=info.width,
                               height=info.height, frame_rate=info.frame_rate, ignored_by_frame=by_frame,
                               folder=seq_dir, skipped=[f"{gt_file}: {s}" for s in gt.skipped],
                               frames={f: info.frame_path(seq_dir, f) for f in range(1, info.length + 1)})
        if class_map:
            _map_mot_classes(seq, table)
        sequences.append(seq)
    return sequences


def _map_mot_classes(seq: TrackingSequence, table: ClassTable) -> None:
    """Apply a class map to MOTChallenge class ids (rows of unknown class -1 stay as they are)."""
    targets = np.array([table.mot_ids.get(int(c), int(c)) for c in seq.gt.classes], dtype=object)
    to_ignore = np.array([t == IGNORE for t in targets], dtype=bool)
    dropped = np.array([t == DROP for t in targets], dtype=bool)
    for frame in np.unique(seq.gt.frames[to_ignore]):
        boxes = seq.gt.boxes[to_ignore & (seq.gt.frames == frame)]
        seq.ignored_by_frame[int(frame)] = np.concatenate([seq.ignored_by_frame.get(int(frame), np.zeros((0, 4))),
                                                           boxes])
    keep = ~(to_ignore | dropped)
    seq.gt = seq.gt.select(keep)
    seq.gt.classes = targets[keep].astype(np.int64)
    if dropped.any():
        seq.notes.append(f"{seq.source}: {int(dropped.sum())} row(s) dropped by the class map")


def _open_kitti(root: Path, skip_bad: bool) -> list[TrackingSequence]:
    base = kitti_io.kitti_root(root)
    if base is None:
        raise DataError(root, "is no KITTI tracking folder (no label_02/ in it or in training/)")
    lengths = kitti_io.read_seqmap_lengths(base)
    sequences = []
    for name in kitti_io.kitti_sequences(base):
        label_file, image_dir = base / kitti_io.LABEL_DIR / f"{name}.txt", base / kitti_io.IMAGE_DIR / name
        labels = kitti_io.read_kitti_labels(label_file, skip_bad)
        frames = frame_files(image_dir, first=0)
        seq = TrackingSequence(name, "kitti", 0, labels.table, {}, label_file, frames=frames,
                               frame_rate=FRAME_RATES["kitti"], ignored_by_frame=labels.dontcare,
                               folder=image_dir if frames else None,
                               skipped=[f"{label_file}: {s}" for s in labels.skipped])
        seq.length = lengths.get(name) or _last_frame(seq)
        sequences.append(seq)
    return sequences


def _open_detrac(root: Path, skip_bad: bool) -> list[TrackingSequence]:
    folder = detrac_io.detrac_annotation_dir(root)
    if folder is None:
        raise DataError(root, "is no UA-DETRAC folder (no sequence XML files in it or in *Annotations-XML*/)")
    sequences = []
    for path in sorted(folder.glob("*.xml")):
        labels = detrac_io.read_detrac_xml(path, skip_bad)
        image_dir = detrac_io.detrac_image_dir(root, path.stem)
        frames = frame_files(image_dir, first=1) if image_dir is not None else {}
        seq = TrackingSequence(path.stem, "detrac", 0, labels.table, {}, path, frames=frames,
                               frame_rate=FRAME_RATES["detrac"], ignored=labels.ignored, folder=image_dir,
                               attributes=labels.attributes,
                               skipped=[f"{path}: {s}" for s in labels.skipped])
        seq.length = _last_frame(seq)
        sequences.append(seq)
    return sequences


def _last_frame(seq: TrackingSequence) -> int:
    """A sequence's length without a seqmap: its last frame image, else its last annotated frame."""
    return max([*seq.frames, *seq.gt.frames.tolist(), *seq.ignored_by_frame, 0])


def frame_files(folder: Path | None, first: int) -> dict[int, Path]:
    """{frame (1-based): image} of a folder whose image names hold a number counted from `first`."""
    if folder is None or not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        digits = re.findall(r"\d+", path.stem)
        if path.suffix.lower() in IMG_EXTENSIONS and digits:
            found[int(digits[-1]) - first + 1] = path
    return dict(sorted(found.items()))


def _finish(seq: TrackingSequence, table: ClassTable, skip_bad: bool) -> TrackingSequence:
    """Names -> class ids, the class map's ignore / drop, reused ids, rows past the end, boxes outside the image."""
    seq.classes = table.names
    if seq.frames and not seq.width:
        from PIL import Image  # reads the header only

        with Image.open(next(iter(seq.frames.values()))) as image:
            seq.width, seq.height = image.size
    gt, lines = seq.gt, seq.gt.extras["line"]
    targets = [table.resolve(n) for n in gt.extras["type"]]
    keep = np.ones(len(gt), dtype=bool)
    first_class: dict[int, int] = {}
    dropped = 0
    for i, target in enumerate(targets):
        problem = None
        if target is None:
            problem = table.unknown(gt.extras["type"][i])
        elif target == DROP:
            keep[i], dropped = False, dropped + 1
            continue
        elif target == IGNORE:
            keep[i] = False
            frame = int(gt.frames[i])
            seq.ignored_by_frame[frame] = np.concatenate([seq.ignored_by_frame.get(frame, np.zeros((0, 4))),
                                                          gt.boxes[i:i + 1]])
            continue
        elif first_class.setdefault(int(gt.ids[i]), target) != target:
            problem = f"track id {gt.ids[i]} is a {table.names[first_class[int(gt.ids[i])]]} elsewhere and a " \
                      f"{table.names[target]} here (track ids must not be reused across classes)"
        elif gt.frames[i] > seq.length:
            problem = f"frame {gt.frames[i]} after the sequence's last frame {seq.length}"
        if problem is not None:
            _refuse_or_skip(seq, lines[i], problem, skip_bad)
            keep[i] = False
    gt.classes = np.array([t if isinstance(t, int) else -1 for t in targets], dtype=np.int64)
    seq.gt = gt.select(keep)
    if dropped:
        seq.notes.append(f"{seq.source}: {dropped} row(s) dropped by the class map")
    if seq.width and seq.height:
        _clip_to_image(seq, skip_bad)
    return seq


def _clip_to_image(seq: TrackingSequence, skip_bad: bool) -> None:
    """Clip gt boxes partly outside the image (counted in notes); boxes entirely outside are bad rows."""
    boxes = seq.gt.xyxy()  # (N, 4)
    clipped = np.clip(boxes, 0, [seq.width, seq.height, seq.width, seq.height])
    outside = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    for i in np.flatnonzero(outside):
        _refuse_or_skip(seq, seq.gt.extras["line"][i], f"box {np.round(boxes[i], 2).tolist()} lies entirely "
                                                       f"outside the {seq.width}x{seq.height} image", skip_bad)
    changed = ~outside & np.any(clipped != boxes, axis=1)
    seq.gt = seq.gt.select(~outside)
    clipped = clipped[~outside]
    if changed.any():
        seq.gt.boxes[changed[~outside]] = np.concatenate([clipped[:, :2], clipped[:, 2:] - clipped[:, :2]],
                                                         axis=1)[changed[~outside]]
        seq.notes.append(f"{seq.source}: {int(changed.sum())} box(es) clipped to the {seq.width}x{seq.height} image")


def _refuse_or_skip(seq: TrackingSequence, line: int, problem: str, skip_bad: bool) -> None:
    if not skip_bad:
        raise DataError(seq.source, f"line {line}: {problem} (pass skip_bad to drop such rows)")
    seq.skipped.append(f"{seq.source}: line {line}: {problem}")
