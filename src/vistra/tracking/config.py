"""The online tracker's settings (kept apart from the tracker so the CLI can read defaults cheaply)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrackerConfig:
    """Association settings of vistra.tracking.tracker.Tracker (its module doc explains each)."""

    match_score: float = 0.3  # detections below this are ignored
    new_track_score: float = 0.5  # unmatched detections at or above this start a track
    max_age: int = 30  # frames a lost track is kept for revival
    iou_gate: float = 0.2  # "iou" cost: smallest IoU of an allowed pair
    center_gate: float = 1.0  # "center" cost: largest distance / sqrt(track w * h) of an allowed pair
    class_agnostic: bool = False  # match across classes (a track keeps its first class)
    velocity_momentum: float = 0.6  # weight of the old velocity when a track is matched again

    def __post_init__(self):
        if self.max_age < 0 or not 0 <= self.iou_gate <= 1 or self.center_gate <= 0:
            raise ValueError(f"tracker needs max_age >= 0, 0 <= iou_gate <= 1, center_gate > 0; got {self}")
