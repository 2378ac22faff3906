"""Tracking by detection: run any detector frame by frame and link its boxes over time with the Tracker.

A detector is any callable `detector(image: PIL.Image) -> (boxes (N, 4) absolute xyxy, scores (N,), labels (N,))`,
optionally with a fourth item, prev_centers (N, 2) (TransCenter), and a reset() called when a sequence starts;
`detector_from_checkpoint` builds one from a trained vistra detector (DETR / Deformable DETR, `vistra train
detect`). `track_frames` links a FrameSource's detections into MOTChallenge result rows; `track_to_folder` is
`vistra track`: results txt, rendered frames, a JSON summary.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from vistra.atomic_io import write_json_atomic
from vistra.checkpoints import CheckpointError
from vistra.trained import task_of

from .frames import FrameSource, open_frames
from .mot_io import MotTable, write_mot_txt
from .render import TrailRenderer
from .tracker import Detections, Tracker, TrackerConfig, TrackOutput

Detector = Callable[[Image.Image], tuple[Any, Any, Any]]
SUMMARY_FILE = "track_summary.json"


def detector_from_checkpoint(checkpoint: str | os.PathLike, device: str = "auto", score_threshold: float = 0.05,
                             overrides: Mapping[str, Any] | None = None) -> tuple[Detector, dict[str, Any]]:
    """A trained vistra detector as a Detector callable, plus its description (model_name, classes {id: name}, ...).

    The image is resized as in the detector's evaluation (its recipe's eval_size); boxes come back in the
    image's own pixels; detections scoring at most score_threshold are dropped. CheckpointError when the
    checkpoint holds no detector.
    """
    from vistra.data.det_transforms import build_det_eval_transform
    from vistra.detection.eval_predict import load_detector, recipe_of
    from vistra.detection.recipe import postprocess_for
    from vistra.engine.trainer import resolve_device

    task = task_of(checkpoint)
    if task not in (None, "detect"):
        raise CheckpointError(f"{checkpoint}: holds a {task} model; `vistra track` runs detector checkpoints "
                              "(tracking by detection)")
    model, info = load_detector(checkpoint, resolve_device(device))
    recipe = recipe_of(info, overrides)
    transform = build_det_eval_transform(recipe.eval_size, recipe.eval_max_size)
    post = postprocess_for(model)
    model_device = next(model.parameters()).device

    @torch.no_grad()
    def detect(image: Image.Image):
        pixels, _ = transform(image, {"boxes": torch.zeros(0, 4)})  # (3, h, w)
        found = post(model(pixels[None].to(model_device)), [(image.height, image.width)],
                     threshold=score_threshold)[0]
        return found["boxes"].cpu().numpy(), found["scores"].cpu().numpy(), found["labels"].cpu().numpy()

    return detect, info


def track_frames(frames: FrameSource, detector: Detector, tracker: Tracker,
                 on_frame: Callable[[int, Image.Image, list[TrackOutput]], None] | None = None,
                 progress: bool = True, rows: list[tuple] | None = None) -> list[tuple]:
    """Detect and track every frame of `frames` in order -> MOTChallenge result rows (frame, id, left, top,
    width, height, score, class, -1). Frame-number gaps and unreadable frames advance the tracker with no
    detections, so tracks age as in real time. Rows are appended to `rows` (a new list by default) as frames
    complete, so a caller that passes its list keeps the finished frames' rows when a later frame raises."""
    rows = [] if rows is None else rows
    tracker.reset()
    if hasattr(detector, "reset"):  # detectors with memory of the previous frame (TransCenter) start afresh
        detector.reset()
    bar = tqdm(total=frames.expected, desc=f"track {frames.name}", unit="frame", disable=not progress)
    try:
        for frame in frames:
            while tracker.frame < frame.index - 1:  # missing frames: no detections
                tracker.update(Detections(np.zeros((0, 4)), [], []))
            tracks = tracker.update(Detections(*detector(frame.image)))
            rows_for(frame.index, tracks, rows)
            if on_frame is not None:
                on_frame(frame.index, frame.image, tracks)
            bar.update(1)
    finally:
        bar.close()
    return rows


def rows_for(frame: int, tracks: list[TrackOutput], rows: list[tuple]) -> None:
    """Append one frame's tracks to `rows` as MOTChallenge rows (xyxy -> left, top, width, height)."""
    for t in tracks:
        x0, y0, x1, y1 = (float(v) for v in t.box)
        rows.append((frame, t.track_id, x0, y0, x1 - x0, y1 - y0, t.score, t.label, -1))


def track_to_folder(source: str | os.PathLike, detector: Detector, out_dir: str | os.PathLike,
                    config: TrackerConfig | None = None, class_names: Mapping[int, str] | None = None,
                    render: bool = True, trail: int = 20, skip_bad: bool = True, progress: bool = True,
                    results_format: str = "mot") -> dict[str, Any]:
    """Track a video / frame folder / MOTChallenge sequence: writes OUT/<name>.txt (MOTChallenge results, class in
    column 8; or with results_format "kitti" KITTI label_02 results, frames from 0, class names as types),
    OUT/frames/<name>/<frame>.png (tracks drawn with IDs and trails) and OUT/track_summary.json.

    The results file is written even when a frame fails midway (skip_bad=False), holding every finished frame.
    Returns the summary: source, name, results, frames (tracked), tracks (distinct IDs), skipped, gaps,
    problems, seconds, fps (frames per second, detector included).
    """
    frames = open_frames(source, skip_bad=skip_bad)
    out = Path(out_dir)
    frame_dir = out / "frames" / frames.name
    if render:
        frame_dir.mkdir(parents=True, exist_ok=True)
    renderer = TrailRenderer(class_names, trail)

    done = []

    def finish_frame(index: int, image: Image.Image, tracks: list[TrackOutput]) -> None:
        done.append(index)
        if render:
            renderer.draw(image, tracks).save(frame_dir / f"{index:06d}.png")

    rows: list[tuple] = []
    results = out / f"{frames.name}.txt"
    write = _results_writer(results_format, class_names)
    start = time.perf_counter()
    try:
        track_frames(frames, detector, Tracker(config), finish_frame, progress, rows)
    finally:
        write(results, MotTable.from_rows(rows))
    seconds = time.perf_counter() - start
    summary = {"source": str(source), "name": frames.name, "results": str(results),
               "frames_dir": str(frame_dir) if render else None, "frames": len(done),
               "tracks": len({r[1] for r in rows}), "boxes": len(rows), "skipped": frames.skipped,
               "gaps": frames.gaps, "problems": frames.problems, "seconds": round(seconds, 2),
               "fps": round(len(done) / max(seconds, 1e-9), 2)}
    write_json_atomic(out / SUMMARY_FILE, summary)
    return summary


def _results_writer(results_format: str, class_names: Mapping[int, str] | None) -> Callable[[Path, MotTable], Any]:
    """(path, table) -> writes the results file in the format asked for; names checked before tracking starts."""
    if results_format == "mot":
        return write_mot_txt
    if results_format != "kitti":
        raise ValueError(f"unknown results format {results_format!r}; known: mot, kitti")
    from .kitti_io import KITTI_TYPES, kitti_type, write_kitti_labels

    types = {cid: kitti_type(name) for cid, name in (class_names or {}).items()}
    if not types or None in types.values():
        raise ValueError(f"KITTI results need KITTI type names (known: {', '.join(KITTI_TYPES)}); the model's "
                         f"classes are {sorted((class_names or {}).values())}")
    return lambda path, table: write_kitti_labels(path, table, types, results=True)
