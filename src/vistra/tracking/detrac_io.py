"""UA-DETRAC files: the per-sequence annotation XML and the dataset's folder layout.

Layout: ROOT/DETRAC-Train-Annotations-XML/<seq>.xml (or the XML files in ROOT itself) and the frames in
ROOT/Insight-MVT_Annotation_Train/<seq>/img00001.jpg ... (also one folder level down, as the download unpacks).

An XML file is ``<sequence name=..>`` holding ``<sequence_attribute camera_state=.. sence_weather=../>``, an
``<ignored_region>`` of ``<box left top width height/>`` (regions to ignore in every frame), then one
``<frame num=.. density=..>`` per annotated frame (1-based) with a ``<target_list>`` of ``<target id=..>``, each
with a ``<box/>`` and an ``<attribute vehicle_type=.. truncation_ratio=.. orientation=.. speed=..
trajectory_length=.. color=../>`` (vehicle types car, bus, van, others); other elements (occlusion) are skipped.

Malformed or truncated XML and bad targets (no box, a box with no area or non-numeric values, no vehicle_type,
an id twice in a frame) stop the reader with DataError("<file>: line N: <problem>"), or with skip_bad=True are
dropped and listed in ``skipped``; with a broken file, every frame completed before the break is kept.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

import numpy as np

from vistra.data.errors import DataError

from .mot_io import MotTable, objects

DETRAC_TYPES = ("car", "bus", "van", "others")  # class ids 1..4
ANNOTATION_DIR, IMAGE_DIR = "DETRAC-Train-Annotations-XML", "Insight-MVT_Annotation_Train"
_BOX_KEYS = ("left", "top", "width", "height")


@dataclass
class DetracLabels:
    """One sequence's XML.

    table: MotTable with 1-based frames, boxes as left, top, width, height, scores 1, classes -1 (names are in
    extras) and extras "type" (N,) vehicle_type str, "line" (N,) int, "attributes" (N,) dicts of the target's
    other attributes. ignored: (k, 4) left, top, width, height of the regions ignored in every frame.
    """

    name: str
    table: MotTable
    ignored: np.ndarray
    attributes: dict[str, str] = field(default_factory=dict)  # sequence_attribute (camera_state, sence_weather)
    skipped: list[str] = field(default_factory=list)


class _Reader:
    """expat handlers that collect the sequence while the parser reports line numbers."""

    def __init__(self, path: Path, parser, skip_bad: bool):
        self.path, self.parser, self.skip_bad = path, parser, skip_bad
        self.name, self.attributes, self.ignored, self.skipped = path.stem, {}, [], []
        self.rows, self.types, self.lines, self.extra = [], [], [], []
        self.stack: list[str] = []
        self.root_tag: str | None = None
        self.frame: dict | None = None  # the open <frame>: num, line, targets
        self.target: dict | None = None  # the open <target>: id, line, box, attributes

    def problem(self, text: str, line: int | None = None) -> None:
        line = self.parser.CurrentLineNumber if line is None else line
        if not self.skip_bad:
            raise DataError(self.path, f"line {line}: {text} (pass skip_bad to drop it)")
        self.skipped.append(f"line {line}: {text}")

    def start(self, tag: str, attrs: dict[str, str]) -> None:
        parent = self.stack[-1] if self.stack else None
        self.stack.append(tag)
        line = self.parser.CurrentLineNumber
        if parent is None:
            self.root_tag = tag
            self.name = attrs.get("name", self.name)
        elif tag == "sequence_attribute":
            self.attributes = dict(attrs)
        elif tag == "box" and parent == "ignored_region":
            box = _box(attrs)
            if isinstance(box, str):
                self.problem(f"ignored region: {box}")
            else:
                self.ignored.append(box)
        elif tag == "frame":
            num = attrs.get("num", "")
            self.frame = {"num": int(num) if num.isdigit() and int(num) >= 1 else None, "line": line, "targets": []}
            if self.frame["num"] is None:
                self.problem(f"<frame> needs num, an integer >= 1, got {num!r}")
        elif tag == "target" and self.frame is not None:
            self.target = {"id": attrs.get("id", ""), "line": line, "box": None, "attributes": None}
        elif tag == "box" and parent == "target" and self.target is not None:
            self.target["box"] = _box(attrs)
        elif tag == "attribute" and parent == "target" and self.target is not None:
            self.target["attributes"] = dict(attrs)

    def end(self, tag: str) -> None:
        self.stack.pop()
        if tag == "target" and self.target is not None and self.frame is not None:
            self.frame["targets"].append(self.target)
            self.target = None
        elif tag == "frame" and self.frame is not None:
            if self.frame["num"] is not None:
                self._add_frame(self.frame)
            self.frame = None

    def _add_frame(self, frame: dict) -> None:
        seen = set()
        for target in frame["targets"]:
            attributes, box, line = target["attributes"] or {}, target["box"], target["line"]
            problem = None
            if not target["id"].lstrip("-").isdigit():
                problem = f"target id must be an integer, got {target['id']!r}"
            elif int(target["id"]) in seen:
                problem = f"target id {target['id']} appears twice in frame {frame['num']}"
            elif box is None or isinstance(box, str):
                problem = f"target {target['id']}: {box or 'no <box>'}"
            elif not attributes.get("vehicle_type"):
                problem = f"target {target['id']}: no <attribute vehicle_type=..>"
            if problem is not None:
                self.problem(problem, line)
                continue
            seen.add(int(target["id"]))
            self.rows.append((frame["num"], int(target["id"]), *box, 1.0, -1, -1))
            self.types.append(attributes.pop("vehicle_type"))
            self.lines.append(line)
            self.extra.append(attributes)


def _box(attrs: Mapping[str, str]) -> tuple[float, ...] | str:
    """A <box>'s (left, top, width, height), or the problem with it."""
    try:
        values = tuple(float(attrs[k]) for k in _BOX_KEYS)
    except KeyError as err:
        return f"<box> lacks {err.args[0]}"
    except ValueError:
        return f"<box> with a non-numeric value {dict(attrs)}"
    if not np.all(np.isfinite(values)) or values[2] <= 0 or values[3] <= 0:
        return f"<box> with no area or a non-finite value {dict(attrs)}"
    return values


def read_detrac_xml(path: str | os.PathLike, skip_bad: bool = False) -> DetracLabels:
    """Read one UA-DETRAC sequence XML; see the module doc."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(path, f"cannot read UA-DETRAC XML ({err.strerror or err})") from None
    parser = expat.ParserCreate()
    reader = _Reader(path, parser, skip_bad)
    parser.StartElementHandler, parser.EndElementHandler = reader.start, reader.end
    try:
        parser.Parse(data, True)
    except expat.ExpatError as err:
        where = f"line {err.lineno}: not well-formed XML ({expat.errors.messages[err.code]}, column {err.offset + 1})"
        last = reader.rows[-1][0] if reader.rows else None
        if not skip_bad:
            raise DataError(path, f"{where}; pass skip_bad to keep the frames before it") from None
        reader.skipped.append(f"{where}; the rest of the file is lost (last frame read: {last})")
    if reader.root_tag not in (None, "sequence"):
        raise DataError(path, f"root element is <{reader.root_tag}>, not <sequence>: no UA-DETRAC annotation file")
    table = MotTable.from_rows(reader.rows)
    table.extras = {"type": objects(reader.types), "line": np.asarray(reader.lines, dtype=np.int64),
                    "attributes": objects(reader.extra)}
    ignored = np.asarray(reader.ignored, dtype=np.float64).reshape(-1, 4)
    return DetracLabels(reader.name, table, ignored, reader.attributes, reader.skipped)


def write_detrac_xml(path: str | os.PathLike, name: str, table: MotTable, type_names: Mapping[int, str],
                     ignored: np.ndarray | None = None, attributes: Mapping[str, str] | None = None) -> Path:
    """Write a sequence (1-based frames, class ids named by type_names) as UA-DETRAC XML: one <frame> per frame
    with rows, targets sorted by id; the target attributes of extras "attributes" are kept when present."""
    path = Path(path)
    unknown = sorted({int(c) for c in table.classes if int(c) not in type_names})
    if unknown:
        raise DataError(path, f"class id(s) {unknown} have no UA-DETRAC vehicle type")
    root = ET.Element("sequence", name=name)
    ET.SubElement(root, "sequence_attribute", dict(attributes or {"camera_state": "unknown",
                                                                   "sence_weather": "unknown"}))
    region = ET.SubElement(root, "ignored_region")
    for box in np.zeros((0, 4)) if ignored is None else ignored:
        ET.SubElement(region, "box", _box_attrs(box))
    extra = table.extras.get("attributes")
    for frame in np.unique(table.frames):
        rows = np.flatnonzero(table.frames == frame)
        rows = rows[np.argsort(table.ids[rows], kind="stable")]
        element = ET.SubElement(root, "frame", density=str(len(rows)), num=str(int(frame)))
        targets = ET.SubElement(element, "target_list")
        for i in rows:
            target = ET.SubElement(targets, "target", id=str(int(table.ids[i])))
            ET.SubElement(target, "box", _box_attrs(table.boxes[i]))
            kept = dict(extra[i]) if extra is not None and extra[i] else {"truncation_ratio": "0"}
            ET.SubElement(target, "attribute", {**kept, "vehicle_type": type_names[int(table.classes[i])]})
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, path)
    return path


def _box_attrs(box: np.ndarray) -> dict[str, str]:
    return {k: f"{float(v):.3f}".rstrip("0").rstrip(".") for k, v in zip(_BOX_KEYS, box)}


# ------------------------------------------------------------------------------------------- layout
def detrac_annotation_dir(root: str | os.PathLike) -> Path | None:
    """The folder of a root's sequence XML files (ROOT/*Annotations-XML*, else ROOT), or None when it has none."""
    root = Path(root)
    if not root.is_dir():
        return None
    for folder in (*sorted(p for p in root.glob("*Annotations-XML*") if p.is_dir()), root):
        if any(_is_detrac_xml(p) for p in sorted(folder.glob("*.xml"))[:3]):
            return folder
    return None


def _is_detrac_xml(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"<sequence" in f.read(512)


def detrac_image_dir(root: str | os.PathLike, seq: str) -> Path | None:
    """The frame folder of a sequence: ROOT/Insight-MVT_Annotation_*/<seq> (or one level down), else ROOT/<seq>."""
    root = Path(root)
    for candidate in (*sorted(root.glob(f"Insight-MVT_Annotation_*/{seq}")),
                      *sorted(root.glob(f"*/Insight-MVT_Annotation_*/{seq}")), root / seq):
        if candidate.is_dir():
            return candidate
    return None
