"""The online tracker's settings (kept apart from the tracker so the CLI can read defaults cheaply)."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrackerConfig:
    """Association settings of vistra.tracking.tracker.Tracker (its module doc explains each).

    class_scores: per-class (match_score, new_track_score) by class id, overriding the two defaults for that
    class (e.g. a higher bar for a class the detector confuses often)."""

    match_score: float = 0.3  # detections below this are ignored
    new_track_score: float = 0.5  # unmatched detections at or above this start a track
    max_age: int = 30  # frames a lost track is kept for revival
    iou_gate: float = 0.2  # "iou" cost: smallest IoU of an allowed pair
    center_gate: float = 1.0  # "center" cost: largest distance / sqrt(track w * h) of an allowed pair
    class_agnostic: bool = False  # match across classes (a track keeps its first class)
    velocity_momentum: float = 0.6  # weight of the old velocity when a track is matched again
    class_scores: dict[int, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self):
        if self.max_age < 0 or not 0 <= self.iou_gate <= 1 or self.center_gate <= 0:
            raise ValueError(f"tracker needs max_age >= 0, 0 <= iou_gate <= 1, center_gate > 0; got {self}")
        self.class_scores = {int(k): (float(v[0]), float(v[1])) for k, v in self.class_scores.items()}

    def scores_for(self, labels):
        """(match_score, new_track_score): two (N,) arrays, the thresholds of each label of the (N,) `labels`."""
        import numpy as np

        match = np.full(len(labels), self.match_score, dtype=np.float64)
        new = np.full(len(labels), self.new_track_score, dtype=np.float64)
        for label, (m, n) in self.class_scores.items():
            match[labels == label], new[labels == label] = m, n
        return match, new

    def lowest_score(self) -> float:
        """The smallest score any detection needs to be used: what a detector must at least keep."""
        return min([self.match_score, self.new_track_score, *(min(v) for v in self.class_scores.values())])


def split_class_score(item: str) -> tuple[str, float, float | None]:
    """A `--class-score` item "NAME_OR_ID=MATCH[,NEW]" -> (NAME_OR_ID, MATCH, NEW or None); ValueError if malformed."""
    key, sep, value = item.partition("=")
    try:
        numbers = [float(v) for v in value.split(",")] if sep and key else []
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2):
        raise ValueError(f"--class-score {item!r}: expected NAME_OR_ID=MATCH[,NEW], e.g. car=0.4,0.6")
    return key, numbers[0], numbers[1] if len(numbers) == 2 else None


def parse_class_scores(items, classes, defaults: TrackerConfig) -> dict[int, tuple[float, float]]:
    """`--class-score` items "NAME_OR_ID=MATCH[,NEW]" -> {class id: (match_score, new_track_score)}.

    classes: {class id: name} of the model (ids may be strings, as in JSON); NEW defaults to the larger of
    MATCH and defaults.new_track_score. An unknown class raises ValueError listing the known ones."""
    by_name = {str(name): int(cid) for cid, name in (classes or {}).items()}
    known = {int(cid) for cid in (classes or {})}
    out: dict[int, tuple[float, float]] = {}
    for item in items or ():
        key, match, new = split_class_score(item)
        if key in by_name:
            cid = by_name[key]
        elif key.lstrip("-").isdigit() and (not known or int(key) in known):
            cid = int(key)
        else:
            listed = ", ".join(f"{name} ({cid})" for name, cid in sorted(by_name.items(), key=lambda x: x[1]))
            raise ValueError(f"--class-score {item!r}: unknown class {key!r}; the model's classes: {listed}")
        out[cid] = (match, new if new is not None else max(match, defaults.new_track_score))
    return out
