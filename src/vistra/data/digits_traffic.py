"""Write a built-in multi-class traffic-tracking dataset in KITTI-tracking layout (`vistra data make
digits-traffic OUT`): moving digits whose groups stand for road-user types, with DontCare regions."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from vistra.data.digits_mot import check_out_dir, digit_scans, render_sequence

MARKER = "vistra digits-traffic dataset"
STAGING = ".staging"
SPLITS = ("train", "val")
# Digit -> KITTI type: three road-user types, each drawn by its own digits.
TYPE_OF_DIGIT = {0: "Car", 1: "Car", 2: "Car", 3: "Car", 4: "Pedestrian", 5: "Pedestrian", 6: "Pedestrian",
                 7: "Cyclist", 8: "Cyclist", 9: "Cyclist"}
ASPECT = {"Car": 1.6, "Pedestrian": 0.55, "Cyclist": 1.0}  # glyph width / height: wide cars, tall pedestrians


def make_digits_traffic(out_dir: str | os.PathLike, n_train: int = 6, n_val: int = 2, length: int = 60,
                        size: tuple[int, int] = (320, 240), digit_size: tuple[int, int] = (24, 48),
                        max_objects: int = 8, dontcare: float = 0.5, seed: int = 0) -> dict[str, Any]:
    """Write OUT/{train,val}/ KITTI-tracking roots (image_02/<seq>/000000.png ..., label_02/<seq>.txt,
    evaluate_tracking.seqmap.training) and OUT/README.txt.

    The sequences are digits-mot's scenes (moving, bouncing, entering and leaving digits that occlude each other
    and hide behind a bar) with each digit labelled by the road-user type it stands for (TYPE_OF_DIGIT: 0-3 Car,
    4-6 Pedestrian, 7-9 Cyclist) and drawn with that type's shape (ASPECT: wide cars, tall pedestrians). In a share `dontcare` of the sequences a region along a border holds 1-3
    parked, unlabelled digits and is written as a DontCare row in every frame: results there are neither misses
    nor false positives. Labels carry truncated (the share of the ink outside the frame), occluded 0-2 (from the
    visible share of the ink: >= 0.8, >= 0.4, less) and unknown 3-D fields. Sequence i of a split depends only on (seed, split, i).
    Re-running replaces a previous output; another non-empty folder is refused (DataError).

    Returns {"out_dir", "seed", "sequences": {split: [names]}, "boxes": {split: n}, "tracks": {split: n},
    "dontcare": {split: sequences with a region}}.
    """
    from vistra.tracking.kitti_io import IMAGE_DIR, KITTI_TYPES, LABEL_DIR, write_kitti_labels, write_seqmap
    from vistra.tracking.mot_io import MotTable

    width, height = size
    if n_train < 1 or n_val < 0 or length < 2 or max_objects < 2 or not 0 <= dontcare <= 1:
        raise ValueError(f"need n_train >= 1, n_val >= 0, length >= 2, max_objects >= 2, 0 <= dontcare <= 1; got "
                         f"{n_train}, {n_val}, {length}, {max_objects}, {dontcare}")
    if not 8 <= digit_size[0] <= digit_size[1] <= min(width, height) // 3:
        raise ValueError(f"need 8 <= digit_size[0] <= digit_size[1] <= a third of the frame's shorter side, got "
                         f"digit_size={digit_size}, size={size}")
    out = Path(out_dir)
    check_out_dir(out, MARKER, "make_digits_traffic")
    glyphs, labels, pools = digit_scans()
    type_ids = {name: KITTI_TYPES.index(name) + 1 for name in set(TYPE_OF_DIGIT.values())}  # the KITTI class ids
    class_of_digit = {d: type_ids[name] for d, name in TYPE_OF_DIGIT.items()}
    names_of_ids = {i: name for name, i in type_ids.items()}

    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    summary: dict[str, Any] = {"out_dir": str(out), "seed": seed, "sequences": {}, "boxes": {}, "tracks": {},
                               "dontcare": {}}
    for code, (split, count) in enumerate(zip(SPLITS, (n_train, n_val))):
        root = staging / split
        names, boxes, tracks, regions = [], 0, 0, 0
        for index in range(count):
            name = f"{index:04d}"
            rng = np.random.default_rng([seed, 7, code, index])
            region = _dontcare_region(rng, width, height, digit_size) if rng.random() < dontcare else None
            parked = None if region is None else (region, int(rng.integers(1, 4)))
            img_dir = root / IMAGE_DIR / name
            img_dir.mkdir(parents=True)
            truncation: list[float] = []
            rows = render_sequence(rng, img_dir, glyphs, labels, pools[split], length, width, height, digit_size,
                                   max_objects, file_name="{:06d}.png", first_frame=0, parked=parked,
                                   aspect={d: ASPECT[name] for d, name in TYPE_OF_DIGIT.items()},
                                   truncation=truncation)
            table = MotTable.from_rows([(*r[:7], class_of_digit[r[7]], r[8]) for r in rows])
            n = len(table)
            table.extras["truncated"] = np.asarray(truncation, dtype=np.float64)  # (N,)
            table.extras["occluded"] = 2 - np.digitize(table.visibility, [0.4, 0.8])  # 0 visible .. 2 mostly hidden
            dontcare_rows = {} if region is None else {f: np.array([region], dtype=np.float64)
                                                       for f in range(1, length + 1)}
            write_kitti_labels(root / LABEL_DIR / f"{name}.txt", table, names_of_ids, dontcare_rows)
            names.append(name)
            boxes += n
            tracks += len(set(table.ids.tolist()))
            regions += region is not None
        write_seqmap(root, {name: length for name in names})
        summary["sequences"][split], summary["boxes"][split] = names, boxes
        summary["tracks"][split], summary["dontcare"][split] = tracks, regions
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
        (staging / split).rename(out / split)
    staging.rmdir()
    (out / "README.txt").write_text(_readme(summary, length, size, digit_size, max_objects))
    return summary


def _dontcare_region(rng: np.random.Generator, width: int, height: int, digit_size: tuple[int, int]
                     ) -> tuple[int, int, int, int]:
    """A strip along a random border, deep enough for the largest digit: (left, top, width, height)."""
    depth = digit_size[1] + 4
    border = int(rng.integers(4))
    if border in (0, 1):  # left / right: a vertical strip over the middle half of the height
        length = height // 2
        top = int(rng.integers(0, height - length + 1))
        return (0 if border == 0 else width - depth), top, depth, length
    length = width // 2
    left = int(rng.integers(0, width - length + 1))
    return left, (0 if border == 2 else height - depth), length, depth


def _readme(summary: dict[str, Any], length: int, size: tuple[int, int], digit_size: tuple[int, int],
            max_objects: int) -> str:
    groups = {}
    for digit, name in TYPE_OF_DIGIT.items():
        groups.setdefault(name, []).append(str(digit))
    legend = ", ".join(f"{name} = digits {' '.join(ds)}" for name, ds in groups.items())
    return f"""{MARKER}
Made by vistra.data.make_digits_traffic (or `vistra data make digits-traffic OUT`); re-run to recreate.

Layout (KITTI tracking): train/ and val/ each hold image_02/<sequence>/000000.png ..., label_02/<sequence>.txt
(frame, track id, type, truncated, occluded, alpha, left top right bottom, 3-D fields unknown) and
evaluate_tracking.seqmap.training.
Classes: {legend}. DontCare rows mark a strip with parked, unlabelled digits in
{summary['dontcare']['train']} train and {summary['dontcare']['val']} val sequences.
Sequences: {len(summary['sequences']['train'])} train and {len(summary['sequences']['val'])} val of {length} frames,
{size[0]}x{size[1]} pixels; 2..{max_objects} moving digits of {digit_size[0]}..{digit_size[1]} pixels each.
{summary['boxes']['train']} train and {summary['boxes']['val']} val boxes.
Score results with `vistra eval track OUT/val RESULTS` (per-class HOTA / MOTA / IDF1).
Digits: scikit-learn's bundled copy of the UCI ML hand-written digits (8x8 scans, CC BY 4.0); train and val use
disjoint scans. Seed {summary['seed']}.
"""
