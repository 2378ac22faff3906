"""Write a built-in multiple-object tracking dataset: handwritten digits moving over a background, in
MOTChallenge layout (`vistra data make digits-mot OUT`)."""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistra.data.errors import DataError

MARKER = "vistra digits-mot dataset"
STAGING = ".staging"
SPLITS = ("train", "val")
CLASS_NAMES = {d: str(d) for d in range(10)}  # class id = the digit, as digits-det's category ids
INK = 0.25  # a glyph pixel with at least this much ink is part of the object


@dataclass
class _Digit:
    """One moving object: glyph ink (h, w) in [0, 1], top-left position and velocity in pixels."""

    track_id: int
    label: int
    ink: np.ndarray
    colour: np.ndarray
    pos: np.ndarray
    vel: np.ndarray
    start: int  # first frame index (0-based) it exists
    bounces: bool  # reflects off the borders once inside; otherwise leaves through them
    inside: bool = False  # has been fully inside the frame (bouncers start bouncing then)
    gone: bool = False


def make_digits_mot(out_dir: str | os.PathLike, n_train: int = 6, n_val: int = 2, length: int = 80,
                    size: tuple[int, int] = (320, 240), digit_size: tuple[int, int] = (24, 48),
                    max_objects: int = 8, seed: int = 0, frame_rate: int = 10) -> dict[str, Any]:
    """Write OUT/{train,val}/digits-NN/{seqinfo.ini, img1/000001.jpg..., gt/gt.txt}, OUT/{train,val}/classes.txt
    and OUT/README.txt.

    Each sequence shows 2..max_objects scikit-learn digit scans (upsampled to digit_size pixels, random ink
    colour) over a gradient background with per-frame noise. Digits move at constant velocity plus noise;
    half of them bounce off the borders, the others leave through them; some enter during the sequence from
    outside the frame; they pass in front of each other (fixed depth order) and, in about half the sequences,
    behind a static vertical bar. gt.txt rows: frame, id, box (the digit's ink, clipped to the frame), 1,
    class (the digit), visibility (share of its ink seen); rows for digits fully outside the frame are omitted.
    Train and val draw from disjoint scans (a fixed 20 % to val). Sequence i of a split depends only on
    (seed, split, i). Re-running replaces a previous output; another non-empty folder is refused (DataError).

    Returns {"out_dir", "seed", "sequences": {split: [names]}, "frames": {split: n}, "boxes": {split: n},
    "tracks": {split: n}}.
    """
    width, height = size
    if n_train < 1 or n_val < 0 or length < 2 or max_objects < 2:
        raise ValueError(f"need n_train >= 1, n_val >= 0, length >= 2, max_objects >= 2; got {n_train}, {n_val}, "
                         f"{length}, {max_objects}")
    if not 8 <= digit_size[0] <= digit_size[1] <= min(width, height) // 2:
        raise ValueError(f"need 8 <= digit_size[0] <= digit_size[1] <= half the frame's shorter side, got "
                         f"digit_size={digit_size}, size={size}")
    from vistra.tracking.mot_io import MotTable, SeqInfo, write_class_names, write_mot_txt, write_seqinfo

    out = Path(out_dir)
    check_out_dir(out, MARKER, "make_digits_mot")
    glyphs, labels, pools = digit_scans()

    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    summary: dict[str, Any] = {"out_dir": str(out), "seed": seed, "sequences": {}, "frames": {}, "boxes": {},
                               "tracks": {}}
    for code, (split, count) in enumerate(zip(SPLITS, (n_train, n_val))):
        (staging / split).mkdir(parents=True)
        write_class_names(staging / split, CLASS_NAMES)
        names, boxes, tracks = [], 0, 0
        for index in range(count):
            name = f"digits-{code * 100 + index + 1:03d}"
            seq_dir = staging / split / name
            (seq_dir / "img1").mkdir(parents=True)
            rng = np.random.default_rng([seed, code, index])
            rows = render_sequence(rng, seq_dir / "img1", glyphs, labels, pools[split], length, width, height,
                                   digit_size, max_objects)
            write_mot_txt(seq_dir / "gt" / "gt.txt", MotTable.from_rows(rows), gt=True)
            write_seqinfo(seq_dir, SeqInfo(name, length, frame_rate, width, height, "img1", ".jpg"))
            names.append(name)
            boxes += len(rows)
            tracks += len({r[1] for r in rows})
        summary["sequences"][split], summary["frames"][split] = names, count * length
        summary["boxes"][split], summary["tracks"][split] = boxes, tracks
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
        (staging / split).rename(out / split)
    staging.rmdir()
    (out / "README.txt").write_text(_readme(summary, length, size, digit_size, max_objects))
    return summary


def digit_scans() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """scikit-learn's digit scans: glyphs (N, 8, 8) ink in [0, 1], labels (N,), and {split: scan indices} with a
    fixed 20 % of the scans for val, whatever the seed."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn is only needed here

    digits = load_digits()
    glyphs = digits.images.astype(np.float32) / 16.0  # (N, 8, 8)
    labels = digits.target.astype(int)
    order = np.random.default_rng(12345).permutation(len(labels))
    return glyphs, labels, {"val": order[: len(order) // 5], "train": order[len(order) // 5:]}


def render_sequence(rng: np.random.Generator, img_dir: Path, glyphs: np.ndarray, labels: np.ndarray,
                    pool: np.ndarray, length: int, width: int, height: int, digit_size: tuple[int, int],
                    max_objects: int, file_name: str = "{:06d}.jpg", first_frame: int = 1,
                    parked: tuple[tuple[int, int, int, int], int] | None = None,
                    aspect: dict[int, float] | None = None, truncation: list[float] | None = None) -> list[tuple]:
    """Draw the frames of one sequence into img_dir (file_name.format(frame number), numbered from first_frame);
    returns its gt rows (frame, id, left, top, width, height, 1, class, visibility), frames 1-based.

    parked: ((left, top, width, height) region, count): that many digits stand still inside the region, drawn
    under the moving ones and never labelled (a region for the annotations to ignore). aspect: {digit: width /
    height} of the drawn glyphs (default square). truncation: when given, receives each row's share of the
    digit's ink outside the frame."""
    background = _gradient(rng, height, width)  # (H, W, 3) float
    digits = [_spawn(rng, k + 1, glyphs, labels, pool, length, width, height, digit_size, background, aspect)
              for k in range(int(rng.integers(2, max_objects + 1)))]
    still = [] if parked is None else [_park(rng, glyphs, labels, pool, parked[0], digit_size, background)
                                       for _ in range(parked[1])]
    bar = None
    if rng.random() < 0.5:  # a static occluder every digit passes behind
        bar_w = int(rng.integers(max(6, digit_size[0] // 2), digit_size[1] + 1))
        bar_x = int(rng.integers(width // 5, 4 * width // 5 - bar_w))
        bar = (bar_x, bar_x + bar_w, rng.uniform(0, 255, size=3))
    rows = []
    for t in range(length):
        picture = background + rng.normal(0.0, 6.0, size=background.shape)
        owner = np.full((height, width), -1)  # (H, W) which digit's ink is on top
        for d in still:
            _paste(picture, owner, d, -3)
        live = [d for d in digits if d.start <= t and not d.gone]
        for k, d in enumerate(live):
            _paste(picture, owner, d, k)
        if bar is not None:
            picture[:, bar[0]:bar[1]] = bar[2]
            owner[:, bar[0]:bar[1]] = -2
        Image.fromarray(picture.clip(0, 255).round().astype(np.uint8)).save(
            img_dir / file_name.format(t + first_frame), quality=92)
        for k, d in enumerate(live):
            box = _visible_box(d, width, height)
            if box is not None:
                visibility = float((owner == k).sum()) / float((d.ink >= INK).sum())
                rows.append((t + 1, d.track_id, *box, 1, d.label, round(visibility, 3)))
                if truncation is not None:
                    truncation.append(round(_outside_share(d, width, height), 3))
        for d in live:
            _move(rng, d, width, height)
    return rows


def _spawn(rng: np.random.Generator, track_id: int, glyphs: np.ndarray, labels: np.ndarray, pool: np.ndarray,
           length: int, width: int, height: int, digit_size: tuple[int, int], background: np.ndarray,
           aspect: dict[int, float] | None = None) -> _Digit:
    """A digit present from the first frame (anywhere inside) or entering later from just outside a border;
    `aspect` ({digit: width / height}) stretches its glyph, keeping the longer side within digit_size."""
    scan = int(rng.choice(pool))
    side = int(rng.integers(digit_size[0], digit_size[1] + 1))
    ratio = (aspect or {}).get(int(labels[scan]), 1.0)
    shape = (side, max(4, round(side / ratio))) if ratio >= 1 else (max(4, round(side * ratio)), side)  # (w, h)
    ink = np.asarray(Image.fromarray(glyphs[scan]).resize(shape, Image.Resampling.BICUBIC)).clip(0, 1)
    side = max(shape)
    speed, angle = rng.uniform(1.0, 4.0), rng.uniform(0, 2 * np.pi)
    vel = speed * np.array([np.cos(angle), np.sin(angle)])
    start = 0 if rng.random() < 0.6 else int(rng.integers(1, max(2, length // 2)))
    if start == 0:
        pos = np.array([rng.uniform(0, width - side), rng.uniform(0, height - side)])
    else:  # just outside a random border, heading in
        border = int(rng.integers(4))
        along = rng.uniform(0.2, 0.8)
        pos, vel = {0: (np.array([-side + 1.0, along * height]), np.array([abs(vel[0]) + 1, vel[1]])),
                    1: (np.array([width - 1.0, along * height]), np.array([-abs(vel[0]) - 1, vel[1]])),
                    2: (np.array([along * width, -side + 1.0]), np.array([vel[0], abs(vel[1]) + 1])),
                    3: (np.array([along * width, height - 1.0]), np.array([vel[0], -abs(vel[1]) - 1]))}[border]
    colour = _contrasting(rng, background.mean(axis=(0, 1)))
    return _Digit(track_id, int(labels[scan]), ink, colour, pos, vel, start, bounces=bool(rng.random() < 0.5))


def _park(rng: np.random.Generator, glyphs: np.ndarray, labels: np.ndarray, pool: np.ndarray,
          region: tuple[int, int, int, int], digit_size: tuple[int, int], background: np.ndarray) -> _Digit:
    """A digit standing still at a random place inside region (left, top, width, height)."""
    left, top, w, h = region
    side = int(rng.integers(digit_size[0], min(digit_size[1], w, h) + 1))
    scan = int(rng.choice(pool))
    ink = np.asarray(Image.fromarray(glyphs[scan]).resize((side, side), Image.Resampling.BICUBIC)).clip(0, 1)
    pos = np.array([rng.uniform(left, left + w - side), rng.uniform(top, top + h - side)])
    return _Digit(-1, int(labels[scan]), ink, _contrasting(rng, background.mean(axis=(0, 1))), pos, np.zeros(2),
                  0, bounces=False)


def _paste(picture: np.ndarray, owner: np.ndarray, d: _Digit, k: int) -> None:
    """Alpha-blend digit d's glyph into picture where it overlaps the frame; mark its ink pixels as owned by k."""
    height, width = owner.shape
    h, w = d.ink.shape
    x, y = int(round(d.pos[0])), int(round(d.pos[1]))
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x0 >= x1 or y0 >= y1:
        return
    ink = d.ink[y0 - y:y1 - y, x0 - x:x1 - x]  # (h', w') visible part of the glyph
    region = picture[y0:y1, x0:x1]
    picture[y0:y1, x0:x1] = region * (1 - ink[..., None]) + d.colour * ink[..., None]
    owner[y0:y1, x0:x1][ink >= INK] = k


def _outside_share(d: _Digit, width: int, height: int) -> float:
    """The share of the digit's ink that lies outside the frame (KITTI's truncation)."""
    rows, cols = np.nonzero(d.ink >= INK)
    xs, ys = cols + round(d.pos[0]), rows + round(d.pos[1])
    inside = (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    return 1.0 - float(inside.mean())


def _visible_box(d: _Digit, width: int, height: int) -> tuple[float, float, float, float] | None:
    """The digit's ink box (left, top, width, height) clipped to the frame, or None when it is outside."""
    rows, cols = np.nonzero(d.ink >= INK)
    x0, y0 = round(d.pos[0]) + cols.min(), round(d.pos[1]) + rows.min()
    x1, y1 = round(d.pos[0]) + cols.max() + 1, round(d.pos[1]) + rows.max() + 1
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def _move(rng: np.random.Generator, d: _Digit, width: int, height: int) -> None:
    """One frame of motion: velocity noise, a step, bounces off the borders or leaving through them."""
    d.vel = d.vel + rng.normal(0.0, 0.15, size=2)
    d.pos = d.pos + d.vel
    h, w = d.ink.shape
    limits = (width - w, height - h)
    fully_in = all(0 <= d.pos[i] <= limits[i] for i in range(2))
    d.inside = d.inside or fully_in
    if d.bounces and d.inside:
        for i in range(2):
            if d.pos[i] < 0 or d.pos[i] > limits[i]:
                d.vel[i] = -d.vel[i]
                d.pos[i] = float(np.clip(d.pos[i], 0, limits[i]))
    elif d.inside and (d.pos[0] <= -w or d.pos[0] >= width or d.pos[1] <= -h or d.pos[1] >= height):
        d.gone = True


def _gradient(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A linear gradient between two random colours at a random angle: (H, W, 3) float."""
    start, end = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)  # (H, W) in [0, 1]
    return start + (end - start) * t[..., None]


def _contrasting(rng: np.random.Generator, behind: np.ndarray) -> np.ndarray:
    """A random RGB colour whose mean brightness differs from `behind`'s by at least 80 (of 255)."""
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if abs(colour.mean() - behind.mean()) >= 80:
            return colour
    return np.zeros(3) if behind.mean() > 127 else np.full(3, 255.0)


def check_out_dir(out: Path, marker: str, maker: str) -> None:
    """Refuse to write into a file, or into a non-empty folder that is not a previous output (a README.txt
    starting with `marker`); `maker` names the writer in the error."""
    if out.exists() and not out.is_dir():
        raise DataError(out, "exists and is not a folder")
    if not out.exists() or all(p.name == STAGING for p in out.iterdir()):
        out.mkdir(parents=True, exist_ok=True)
        return
    readme = out / "README.txt"
    if not (readme.is_file() and readme.read_text(errors="replace").startswith(marker)):
        raise DataError(out, f"folder is not empty and was not made by {maker}; choose a new or empty folder")


def _readme(summary: dict[str, Any], length: int, size: tuple[int, int], digit_size: tuple[int, int],
            max_objects: int) -> str:
    return f"""{MARKER}
Made by vistra.data.make_digits_mot (or `vistra data make digits-mot OUT`); re-run to recreate.

Layout (MOTChallenge): train/<sequence>/ and val/<sequence>/, each with seqinfo.ini, img1/000001.jpg ... and
gt/gt.txt (frame, id, left, top, width, height, 1, class, visibility); train/classes.txt and val/classes.txt
name the classes (id = the digit, 0..9).
Sequences: {len(summary['sequences']['train'])} train and {len(summary['sequences']['val'])} val of {length} frames,
{size[0]}x{size[1]} pixels; 2..{max_objects} digits of {digit_size[0]}..{digit_size[1]} pixels each, moving at
constant velocity plus noise, bouncing or leaving, some entering later, occluding each other and sometimes
hidden by a static bar. {summary['boxes']['train']} train and {summary['boxes']['val']} val boxes.
Score results with `vistra eval track OUT/val RESULTS`.
Digits: scikit-learn's bundled copy of the UCI ML hand-written digits (8x8 scans, CC BY 4.0); train and val use
disjoint scans. Seed {summary['seed']}.
"""
