"""`vistra data convert`: a tracking dataset from one format to another (MOTChallenge, KITTI tracking, UA-DETRAC),
or to COCO detection json with the frames as images, so detectors can be trained on tracking data.

SRC is one dataset folder, or a folder of splits (train/, val/, ...) each in one format; splits are converted
one by one into DST/<split>. Frames are hard-linked into the target layout (copied across file systems, or with
copy=True) under the names the target format uses:
- mot: DST/<seq>/{seqinfo.ini, img1/000001.jpg, gt/gt.txt}, DST/classes.txt; ignore regions become rows with
  id -1 and flag 0;
- kitti: DST/image_02/<seq>/000000.png, DST/label_02/<seq>.txt, DST/evaluate_tracking.seqmap.training; ignore
  regions become DontCare rows; class names must be KITTI types (case-insensitive) after the class map;
- detrac: DST/DETRAC-Train-Annotations-XML/<seq>.xml, DST/Insight-MVT_Annotation_Train/<seq>/img00001.jpg;
  class names must be UA-DETRAC vehicle types; regions ignored in single frames cannot be written (counted);
- coco: DST/<split>/<seq>_<frame>.<ext> and DST/annotations/instances_<split>.json (what `vistra train detect
  --data DST` reads; split "train" for a single dataset unless named): categories are the class names with their
  ids, each box an annotation with its "track_id", each ignore region an iscrowd=1 box for every category in use
  (COCO evaluation then ignores detections there, training skips them).
Rows with flag 0 (MOTChallenge's not-considered rows) are left out of KITTI, UA-DETRAC and COCO, counted.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vistra.atomic_io import write_json_atomic
from vistra.data.errors import DataError

from . import detrac_io, kitti_io, mot_io
from .datasets import MOT17_CLASSES, TrackingSequence, detect_format, open_sequences
from .mot_io import MotTable

TARGETS = ("mot", "kitti", "detrac", "coco")


def convert_dataset(src: str | os.PathLike, dst: str | os.PathLike, to: str, format: str | None = None,
                    class_map: Mapping[str, str] | str | None = None, skip_bad: bool = False,
                    split: str | None = None, copy: bool = False) -> dict[str, Any]:
    """Convert SRC into a new folder DST in format `to` (see the module doc); format: SRC's, detected when None.

    Returns {"format", "to", "dst", "splits": {name: {"sequences", "frames", "boxes", "ignore_regions"}},
    "skipped": [...], "notes": [...]}.
    """
    if to not in TARGETS:
        raise ValueError(f"unknown target format {to!r}; known: {', '.join(TARGETS)}")
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise DataError(dst, "exists and is not empty; convert into a new folder")
    summary: dict[str, Any] = {"format": None, "to": to, "dst": str(dst), "splits": {}, "skipped": [], "notes": []}
    for name, folder in _splits(src, format):
        sequences = open_sequences(folder, format, class_map, skip_bad)
        summary["format"] = sequences[0].format
        summary["skipped"] += [s for seq in sequences for s in seq.skipped]
        summary["notes"] += [n for seq in sequences for n in seq.notes]
        if to == "coco":
            counts = write_coco(sequences, dst, name or split or "train", copy)
        else:
            out = dst / name if name else dst
            counts = {"mot": write_mot, "kitti": write_kitti, "detrac": write_detrac}[to](sequences, out, copy)
        summary["notes"] += counts.pop("notes")
        summary["splits"][name or split or "."] = counts
    return summary


def _splits(src: Path, format: str | None) -> list[tuple[str | None, Path]]:
    """[(None, SRC)] for one dataset folder, else [(split name, folder)] of SRC's dataset sub-folders."""
    if not src.is_dir():
        raise DataError(src, "tracking dataset folder does not exist")
    if _is_dataset(src, format):
        return [(None, src)]
    splits = [(child.name, child) for child in sorted(src.iterdir()) if child.is_dir() and _is_dataset(child, format)]
    return splits or [(None, src)]  # (open_sequences then says what is wrong)


def _is_dataset(folder: Path, format: str | None) -> bool:
    try:
        found = detect_format(folder)
    except DataError:
        return False
    return format is None or found == format


# ------------------------------------------------------------------------------------------ writers
def write_mot(sequences: list[TrackingSequence], out: Path, copy: bool) -> dict[str, Any]:
    """MOTChallenge sequence folders with classes.txt (left out for MOT17-class data without one)."""
    counts = _counts()
    for seq in sequences:
        seq_dir = out / seq.name
        ext = next(iter(seq.frames.values())).suffix if seq.frames else ".jpg"
        for frame, path in seq.frames.items():
            _place(path, seq_dir / "img1" / f"{frame:06d}{path.suffix}", copy)
        regions = [(f, -1, *box, 0, -1, -1) for f in range(1, seq.length + 1) for box in seq.ignore_regions(f)]
        rows = MotTable.from_rows(regions)
        table = _concat(seq.gt, rows)
        mot_io.write_seqinfo(seq_dir, mot_io.SeqInfo(seq.name, seq.length, seq.frame_rate, seq.width, seq.height,
                                                     "img1", ext))
        mot_io.write_mot_txt(seq_dir / "gt" / "gt.txt", table, gt=True)
        _count(counts, seq, len(seq.gt), len(rows))
    if not (sequences[0].format == "mot" and sequences[0].classes == MOT17_CLASSES):
        out.mkdir(parents=True, exist_ok=True)
        mot_io.write_class_names(out, sequences[0].classes)
    return counts


def write_kitti(sequences: list[TrackingSequence], out: Path, copy: bool) -> dict[str, Any]:
    """A KITTI tracking root: image_02/, label_02/ and a seqmap."""
    names = _target_names(sequences, kitti_io.kitti_type, "KITTI type", kitti_io.KITTI_TYPES)
    counts = _counts()
    for seq in sequences:
        for frame, path in seq.frames.items():
            _place(path, out / kitti_io.IMAGE_DIR / seq.name / f"{frame - 1:06d}{path.suffix}", copy)
        table = _considered(seq, counts)
        dontcare = {f: seq.ignore_regions(f) for f in range(1, seq.length + 1) if len(seq.ignore_regions(f))}
        kitti_io.write_kitti_labels(out / kitti_io.LABEL_DIR / f"{seq.name}.txt", table, names, dontcare)
        _count(counts, seq, len(table), sum(len(r) for r in dontcare.values()))
    kitti_io.write_seqmap(out, {seq.name: seq.length for seq in sequences})
    return counts


def write_detrac(sequences: list[TrackingSequence], out: Path, copy: bool) -> dict[str, Any]:
    """A UA-DETRAC root: DETRAC-Train-Annotations-XML/ and Insight-MVT_Annotation_Train/."""
    lower = {t.lower(): t for t in detrac_io.DETRAC_TYPES}
    names = _target_names(sequences, lambda n: lower.get(n.lower()), "UA-DETRAC vehicle type", detrac_io.DETRAC_TYPES)
    counts = _counts()
    for seq in sequences:
        for frame, path in seq.frames.items():
            _place(path, out / detrac_io.IMAGE_DIR / seq.name / f"img{frame:05d}{path.suffix}", copy)
        table = _considered(seq, counts)
        common = _in_every_frame(seq)  # (k, 4)
        lost = sum(len(r) for r in seq.ignored_by_frame.values()) - len(common) * seq.length
        if lost:
            counts["notes"].append(f"{seq.source}: {lost} ignore region(s) of single frames left out (UA-DETRAC "
                                   "XML holds only regions ignored in every frame)")
        ignored = np.concatenate([seq.ignored, common])
        detrac_io.write_detrac_xml(out / detrac_io.ANNOTATION_DIR / f"{seq.name}.xml", seq.name, table, names,
                                   ignored, seq.attributes or None)
        _count(counts, seq, len(table), len(ignored))
    return counts


def write_coco(sequences: list[TrackingSequence], dst: Path, split: str, copy: bool) -> dict[str, Any]:
    """DST/<split>/ frames and DST/annotations/instances_<split>.json (see the module doc)."""
    counts = _counts()
    tables = {seq.name: _considered(seq, counts) for seq in sequences}
    used = sorted({int(c) for t in tables.values() for c in t.classes if c >= 0})
    images, annotations = [], []
    for seq in sequences:
        if not seq.frames:
            raise DataError(seq.source, f"sequence {seq.name} has no frame images; COCO json needs them")
        width, height = seq.width, seq.height
        if not (width and height):
            from PIL import Image  # reads the header only

            with Image.open(next(iter(seq.frames.values()))) as image:
                width, height = image.size
        table, regions_total = tables[seq.name], 0
        for frame, path in seq.frames.items():
            image_id = len(images) + 1
            file_name = f"{seq.name}_{frame:06d}{path.suffix}"
            _place(path, dst / split / file_name, copy)
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                           "sequence": seq.name, "frame": frame})
            rows = table.at_frame(frame)
            for box, cid, track in zip(rows.boxes, rows.classes, rows.ids):
                annotations.append(_annotation(len(annotations) + 1, image_id, int(cid), box, 0, int(track)))
            for box in seq.ignore_regions(frame):
                regions_total += 1
                annotations += [_annotation(len(annotations) + 1 + k, image_id, cid, box, 1) for k, cid in
                                enumerate(used)]
        unframed = int(np.sum(~np.isin(table.frames, list(seq.frames))))
        if unframed:
            counts["notes"].append(f"{seq.source}: {unframed} box(es) on frames without an image left out")
        _count(counts, seq, len(table) - unframed, regions_total)
    categories = [{"id": cid, "name": name, "supercategory": "object"} for cid, name in
                  sorted(sequences[0].classes.items())]
    path = dst / "annotations" / f"instances_{split}.json"
    write_json_atomic(path, {"images": images, "annotations": annotations, "categories": categories}, indent=None)
    return counts


def _annotation(ann_id: int, image_id: int, category: int, box: np.ndarray, crowd: int,
                track: int | None = None) -> dict[str, Any]:
    left, top, width, height = (round(float(v), 2) for v in box)
    found = {"id": ann_id, "image_id": image_id, "category_id": category, "bbox": [left, top, width, height],
             "area": round(width * height, 2), "iscrowd": crowd}
    return found if track is None else {**found, "track_id": track}


# ------------------------------------------------------------------------------------------ helpers
def _target_names(sequences: list[TrackingSequence], spell: Callable[[str], str | None], what: str,
                  known: tuple[str, ...]) -> dict[int, str]:
    """{class id: the target format's spelling} of the classes in use; DataError for names it lacks."""
    used = sorted({int(c) for seq in sequences for c in seq.gt.classes if c >= 0})
    names = sequences[0].classes
    found = {cid: spell(names.get(cid, "")) for cid in used}
    missing = [names.get(cid, str(cid)) for cid, name in found.items() if name is None]
    if missing:
        raise DataError(sequences[0].source.parent, f"class(es) {', '.join(missing)} have no {what} (known: "
                                                    f"{', '.join(known)}); map them with --class-map "
                                                    f"{missing[0]}=NAME (or =ignore, =drop)")
    return found


def _in_every_frame(seq: TrackingSequence) -> np.ndarray:
    """(k, 4): the single-frame ignore regions that every frame of the sequence repeats (a MOTChallenge file's
    rows for UA-DETRAC's sequence-wide regions)."""
    first = seq.ignored_by_frame.get(1, np.zeros((0, 4)))
    frames = [seq.ignored_by_frame.get(f, np.zeros((0, 4))) for f in range(2, seq.length + 1)]
    repeated = [box for box in first if all(np.any(np.all(np.abs(r - box) < 1e-6, axis=1)) for r in frames)]
    return np.asarray(repeated, dtype=np.float64).reshape(-1, 4)


def _considered(seq: TrackingSequence, counts: dict[str, Any]) -> MotTable:
    """The gt rows to write: flag-0 rows are left out (counted)."""
    flagged = seq.gt.scores == 0
    if flagged.any():
        counts["notes"].append(f"{seq.source}: {int(flagged.sum())} row(s) with flag 0 (not considered) left out")
    return seq.gt.select(~flagged)


def _concat(a: MotTable, b: MotTable) -> MotTable:
    return MotTable(np.concatenate([a.frames, b.frames]), np.concatenate([a.ids, b.ids]),
                    np.concatenate([a.boxes, b.boxes]), np.concatenate([a.scores, b.scores]),
                    np.concatenate([a.classes, b.classes]), np.concatenate([a.visibility, b.visibility]))


def _counts() -> dict[str, Any]:
    return {"sequences": 0, "frames": 0, "boxes": 0, "ignore_regions": 0, "notes": []}


def _count(counts: dict[str, Any], seq: TrackingSequence, boxes: int, regions: int) -> None:
    counts["sequences"] += 1
    counts["frames"] += len(seq.frames)
    counts["boxes"] += boxes
    counts["ignore_regions"] += regions


def _place(src: Path, dst: Path, copy: bool) -> None:
    """dst as a hard link to src (a copy across file systems, or when copy)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
