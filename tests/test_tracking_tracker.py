"""The online tracker on synthetic detections: stable IDs, occlusions, revival, gating, classes, displacements."""
import numpy as np
import pytest

from vistra.tracking.tracker import Detections, Tracker, TrackerConfig


def _box(cx, cy, size=20.0):
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def _run(tracker, frames):
    """frames: list of lists of (object name, cx, cy[, label]) -> {frame: {object: track id}}."""
    seen = {}
    for t, objects in enumerate(frames):
        dets = Detections([_box(o[1], o[2]) for o in objects], [0.9] * len(objects),
                          [o[3] if len(o) > 3 else 0 for o in objects])
        out = tracker.update(dets)
        by_box = {tuple(np.round(o.box, 3)): o.track_id for o in out}
        seen[t] = {o[0]: by_box[tuple(np.round(_box(o[1], o[2]), 3))] for o in objects}
    return seen


def _walkers(length, hidden=(), rng=None):
    """Three objects walking right at 3 px / frame on separate rows; 'b' is undetected in the frames `hidden`."""
    rng = rng or np.random.default_rng(0)
    frames = []
    for t in range(length):
        objs = [(name, 20 + 3 * t + rng.normal(0, 0.5), y) for name, y in (("a", 30), ("b", 80), ("c", 130))]
        frames.append([o for o in objs if not (o[0] == "b" and t in hidden)])
    return frames


def test_ids_are_stable_and_distinct():
    seen = _run(Tracker(), _walkers(20))
    assert seen[0] == {"a": 1, "b": 2, "c": 3}
    assert all(ids == seen[0] for ids in seen.values())


def test_occlusion_shorter_than_max_age_keeps_the_id():
    seen = _run(Tracker(TrackerConfig(max_age=10)), _walkers(30, hidden=range(8, 16)))  # 8 frames unseen
    assert seen[29]["b"] == seen[0]["b"] == 2
    assert {ids["a"] for ids in seen.values()} == {1}


def test_occlusion_longer_than_max_age_gives_a_new_id():
    tracker = Tracker(TrackerConfig(max_age=5))
    seen = _run(tracker, _walkers(30, hidden=range(8, 16)))
    assert seen[7]["b"] == 2 and seen[16]["b"] == 4  # a fresh ID after the track was dropped
    assert seen[29]["b"] == 4 and 2 not in {t.track_id for t in tracker.tracks}


def test_lost_track_revived_where_its_velocity_predicts():
    # fast object (8 px / frame, 20 px boxes): after 4 unseen frames its last box no longer overlaps the new
    # one, only the velocity-moved prediction does
    frames = [[("a", 20 + 8 * t, 50)] for t in range(20)]
    for t in range(6, 10):
        frames[t] = []
    tracker = Tracker(TrackerConfig(max_age=10))
    ids = [tracker.update(Detections([_box(o[1], o[2]) for o in f], [0.9] * len(f), [0] * len(f)))
           for f in frames]
    assert {o.track_id for out in ids for o in out} == {1}


def test_iou_gate_refuses_far_detections():
    tracker = Tracker(TrackerConfig(iou_gate=0.3))
    first = tracker.update(Detections([_box(50, 50)], [0.9], [0]))
    jump = tracker.update(Detections([_box(62, 50)], [0.9], [0]))  # IoU of the 20 px boxes = 8/32 = 0.25
    assert first[0].track_id == 1 and [o.track_id for o in jump] == [2]
    loose = Tracker(TrackerConfig(iou_gate=0.2))
    loose.update(Detections([_box(50, 50)], [0.9], [0]))
    assert [o.track_id for o in loose.update(Detections([_box(62, 50)], [0.9], [0]))] == [1]


def test_classes_are_not_mixed_unless_class_agnostic():
    frames = [[("a", 50 + t, 50, 0 if t < 3 else 1)] for t in range(6)]  # the class flips at frame 3
    assert {ids["a"] for ids in _run(Tracker(), frames).values()} == {1, 2}
    agnostic = _run(Tracker(TrackerConfig(class_agnostic=True)), frames)
    assert {ids["a"] for ids in agnostic.values()} == {1}


def test_score_thresholds():
    tracker = Tracker(TrackerConfig(match_score=0.3, new_track_score=0.6))
    assert tracker.update(Detections([_box(50, 50), _box(150, 50)], [0.5, 0.2], [0, 0])) == []  # too weak to start
    born = tracker.update(Detections([_box(50, 50)], [0.7], [0]))
    kept = tracker.update(Detections([_box(51, 50), _box(150, 50)], [0.4, 0.2], [0, 0]))  # 0.4 may continue
    assert [o.track_id for o in born] == [1] and [(o.track_id, o.score) for o in kept] == [(1, 0.4)]


def test_center_displacements_link_fast_objects_that_iou_cannot():
    # two objects moving 30 px / frame (no overlap between frames), crossing paths; the detections carry their
    # previous centers (what TransCenter's tracking displacement gives)
    length = 8
    paths = {"a": [(20 + 30 * t, 40 + 10 * t) for t in range(length)],
             "b": [(20 + 30 * t, 110 - 10 * t) for t in range(length)]}
    center = Tracker(TrackerConfig(center_gate=1.0))
    iou = Tracker()
    ids_center, ids_iou = {"a": set(), "b": set()}, {"a": set(), "b": set()}
    for t in range(length):
        names = ["a", "b"]
        boxes = [_box(*paths[n][t]) for n in names]
        prev = [paths[n][max(t - 1, 0)] for n in names]
        out_c = center.update(Detections(boxes, [0.9, 0.9], [0, 0], prev_centers=prev))
        out_i = iou.update(Detections(boxes, [0.9, 0.9], [0, 0]))
        for out, ids in ((out_c, ids_center), (out_i, ids_iou)):
            for n, b in zip(names, boxes):
                ids[n] |= {o.track_id for o in out if np.allclose(o.box, b)}
    assert ids_center == {"a": {1}, "b": {2}}
    assert len(ids_iou["a"]) > 1  # IoU association loses them every frame


def test_gaps_and_reset():
    tracker = Tracker(TrackerConfig(max_age=2))
    tracker.update(Detections([_box(50, 50)], [0.9], [0]))
    for _ in range(3):
        tracker.update(Detections(np.zeros((0, 4)), [], []))
    assert tracker.tracks == []  # dropped after max_age empty frames
    tracker.reset()
    assert tracker.update(Detections([_box(50, 50)], [0.9], [0]))[0].track_id == 1 and tracker.frame == 1


def test_bad_config_is_a_value_error():
    with pytest.raises(ValueError, match="max_age"):
        TrackerConfig(max_age=-1)


def test_per_class_scores_override_the_defaults():
    config = TrackerConfig(match_score=0.3, new_track_score=0.5, class_scores={2: (0.6, 0.8)})
    tracker = Tracker(config)
    boxes = [[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]]
    out = tracker.update(Detections(boxes, [0.55, 0.7, 0.9], [1, 2, 2]))  # class 2 needs 0.8 to start a track
    assert [(t.label, t.score) for t in out] == [(1, 0.55), (2, 0.9)]
    out = tracker.update(Detections(boxes, [0.35, 0.65, 0.5], [1, 2, 2]))  # class 2 needs 0.6 to match
    assert [(t.track_id, t.label) for t in out] == [(1, 1)]
    assert config.lowest_score() == 0.3


def test_class_score_items_by_name_or_id():
    from vistra.tracking.config import parse_class_scores

    classes = {"1": "car", "2": "pedestrian"}
    got = parse_class_scores(["car=0.4,0.6", "2=0.7"], classes, TrackerConfig(new_track_score=0.5))
    assert got == {1: (0.4, 0.6), 2: (0.7, 0.7)}
    with pytest.raises(ValueError, match=r"unknown class 'truck'; the model's classes: car \(1\), pedestrian \(2\)"):
        parse_class_scores(["truck=0.5"], classes, TrackerConfig())
    with pytest.raises(ValueError, match="expected NAME_OR_ID=MATCH"):
        parse_class_scores(["car=high"], classes, TrackerConfig())
