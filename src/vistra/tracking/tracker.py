"""Online multi-object tracking: associate each frame's detections with the existing tracks.

Per frame (`Tracker.update`):
Scores are compared with the config's match_score / new_track_score, or its class_scores for that class.
1. Tracks seen in the previous frame are matched to the confident detections (score >= match_score) by the
   Hungarian algorithm on a gated cost, then the tracks lost for 1..max_age frames get a chance at the
   detections still unmatched (so an object hidden for a few frames comes back with its old ID).
2. Unmatched detections scoring >= new_track_score start new tracks with fresh IDs (1, 2, ...).
3. Tracks unmatched for more than max_age frames are dropped for good.

Two costs, chosen per frame by what the detections carry:
- "iou" (tracking by detection): 1 - IoU between a track's predicted box (last box moved by its velocity for
  the frames since it was seen) and the detection; pairs with IoU < iou_gate are not allowed.
- "center" (TransCenter): detections with `prev_centers` (their center in the previous frame, i.e. center
  minus the predicted tracking displacement) are matched by the distance from that point to the track's
  predicted center, divided by the track box's size sqrt(w * h); pairs farther than center_gate are not allowed.
Matching happens within a class (labels must agree) unless class_agnostic.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from vistra.detection.box_ops import box_iou

from .config import TrackerConfig

_FORBIDDEN = 1e6  # cost of a gated pair: never chosen over an allowed one


@dataclass
class Detections:
    """One frame's detections. boxes (N, 4) absolute xyxy; scores (N,); labels (N,) class ids;
    prev_centers (N, 2) or None: where each object's center was in the previous frame (TransCenter)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    prev_centers: np.ndarray | None = None

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(n)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(n)
        if self.prev_centers is not None:
            self.prev_centers = np.asarray(self.prev_centers, dtype=np.float64).reshape(n, 2)

    def __len__(self) -> int:
        return len(self.boxes)

    def select(self, keep: np.ndarray) -> Detections:
        prev = None if self.prev_centers is None else self.prev_centers[keep]
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], prev)


@dataclass
class Track:
    """One object followed over time. box: last matched xyxy box; velocity: center motion in pixels / frame."""

    track_id: int
    box: np.ndarray
    label: int
    score: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    hits: int = 1
    lost: int = 0  # frames since the track was last matched (0 = matched this frame)

    def predicted_box(self) -> np.ndarray:
        """The last box moved by the velocity over the frames since it was seen, plus the coming frame."""
        shift = self.velocity * (self.lost + 1)
        return self.box + np.concatenate([shift, shift])

    def center(self) -> np.ndarray:
        return (self.box[:2] + self.box[2:]) / 2


@dataclass
class TrackOutput:
    """A track matched or born in the current frame."""

    track_id: int
    box: np.ndarray  # (4,) xyxy
    score: float
    label: int


class Tracker:
    """Online tracker; call `update(detections)` once per frame, in order; see the module doc."""

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self.next_id = 1
        self.frame = 0

    def reset(self) -> None:
        """Forget every track (a new sequence starts); IDs start again at 1."""
        self.tracks, self.next_id, self.frame = [], 1, 0

    def update(self, detections: Detections) -> list[TrackOutput]:
        """Associate one frame's detections; returns the tracks present in this frame, sorted by ID."""
        cfg = self.config
        self.frame += 1
        dets = detections.select(detections.scores >= cfg.scores_for(detections.labels)[0])
        unmatched = np.arange(len(dets))
        recent = [t for t in self.tracks if t.lost == 0]
        lost = [t for t in self.tracks if t.lost > 0]
        matched: set[int] = set()
        for group in (recent, lost):  # recently seen tracks choose first
            pairs = self._match(group, dets.select(unmatched))
            for track_index, det_index in pairs:
                self._absorb(group[track_index], dets, int(unmatched[det_index]))
                matched.add(group[track_index].track_id)
            unmatched = np.delete(unmatched, [d for _, d in pairs])
        for track in self.tracks:
            track.lost = 0 if track.track_id in matched else track.lost + 1
        self.tracks = [t for t in self.tracks if t.lost <= cfg.max_age]
        new_track_score = cfg.scores_for(dets.labels)[1]  # (D,)
        for index in unmatched:
            if dets.scores[index] >= new_track_score[index]:
                self.tracks.append(Track(self.next_id, dets.boxes[index].copy(), int(dets.labels[index]),
                                         float(dets.scores[index])))
                self.next_id += 1
        current = sorted((t for t in self.tracks if t.lost == 0), key=lambda t: t.track_id)
        return [TrackOutput(t.track_id, t.box.copy(), t.score, t.label) for t in current]

    def _match(self, tracks: list[Track], dets: Detections) -> list[tuple[int, int]]:
        """Hungarian matching on the gated cost -> [(track index, detection index), ...] of allowed pairs."""
        if not tracks or not len(dets):
            return []
        cost = self._cost(tracks, dets)  # (T, D), _FORBIDDEN where gated
        rows, cols = linear_sum_assignment(cost)
        return [(int(r), int(c)) for r, c in zip(rows, cols) if cost[r, c] < _FORBIDDEN]

    def _cost(self, tracks: list[Track], dets: Detections) -> np.ndarray:
        """(T, D) association cost, _FORBIDDEN for pairs outside the gate or of different classes."""
        cfg = self.config
        predicted = np.stack([t.predicted_box() for t in tracks])  # (T, 4)
        if dets.prev_centers is not None:
            track_centers = (predicted[:, :2] + predicted[:, 2:]) / 2 - np.stack([t.velocity for t in tracks])
            scale = np.sqrt(np.prod(np.maximum(predicted[:, 2:] - predicted[:, :2], 1.0), axis=1))  # (T,)
            distance = np.linalg.norm(track_centers[:, None] - dets.prev_centers[None], axis=-1)  # (T, D)
            cost = distance / scale[:, None]
            allowed = cost <= cfg.center_gate
        else:
            iou, _ = box_iou(torch.from_numpy(predicted), torch.from_numpy(dets.boxes))
            cost = 1.0 - iou.numpy()  # (T, D)
            allowed = cost <= 1.0 - cfg.iou_gate
        if not cfg.class_agnostic:
            allowed &= np.array([t.label for t in tracks])[:, None] == dets.labels[None]
        return np.where(allowed, cost, _FORBIDDEN)

    def _absorb(self, track: Track, dets: Detections, index: int) -> None:
        """Move `track` to detection `index`, updating its velocity."""
        box = dets.boxes[index]
        gap = track.lost + 1  # frames since the track was last seen
        step = ((box[:2] + box[2:]) / 2 - track.center()) / gap
        momentum = self.config.velocity_momentum if track.hits > 1 else 0.0
        track.velocity = momentum * track.velocity + (1 - momentum) * step
        track.box, track.score = box.copy(), float(dets.scores[index])
        track.hits += 1
