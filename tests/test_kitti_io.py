"""KITTI tracking label_02 files: reading, writing, bad rows, and evaluation parity with TrackEval's own
Kitti2DBox pipeline (Van / Person distractors, occluded and truncated gt, DontCare regions, small results)."""
import numpy as np
import pytest
import trackeval

from vistra.data.errors import DataError
from vistra.tracking.evaluate import evaluate_tracking
from vistra.tracking.kitti_io import KITTI_TYPES, kitti_type, read_kitti_labels, write_kitti_labels

GT_ROWS = """\
0 -1 DontCare -1 -1 -10.000000 219.310000 188.490000 245.500000 218.560000 -1000.000000 -1000.000000 -1000.000000 -10.000000 -1.000000 -1.000000 -1.000000
0 0 Van 0 0 -1.793451 296.744956 161.752147 455.226042 292.372804 2.000000 1.823255 4.433886 -4.552284 1.858523 13.410495 -2.115488
0 1 Cyclist 0 0 -1.936993 737.619499 161.531951 931.112229 374.000000 1.739063 0.824591 1.785241 1.640400 1.675660 5.776261 -1.675458

1 0 Van 0 0 -1.796862 294.898777 156.024256 452.199718 284.621269 2.000000 1.823255 4.433886 -4.650955 1.766774 13.581085 -2.121565
1 2 Person_sitting 1 2 -1.9 7 1 9 40 1 1 1 1 1 1 1
"""


def test_read_gt_rows_dontcare_and_fields(tmp_path):
    path = tmp_path / "0000.txt"
    path.write_text(GT_ROWS)
    labels = read_kitti_labels(path)
    t = labels.table
    assert t.frames.tolist() == [1, 1, 2, 2] and t.ids.tolist() == [0, 1, 0, 2]  # frames 1-based
    assert list(t.extras["type"]) == ["Van", "Cyclist", "Van", "Person_sitting"]
    assert t.extras["line"].tolist() == [2, 3, 5, 6]
    np.testing.assert_allclose(t.boxes[0], [296.744956, 161.752147, 455.226042 - 296.744956, 292.372804 - 161.752147])
    assert t.extras["truncated"][3] == 1 and t.extras["occluded"][3] == 2
    np.testing.assert_allclose(t.extras["kitti_3d"][0], [-1.793451, 2, 1.823255, 4.433886, -4.552284, 1.858523,
                                                         13.410495, -2.115488])
    assert list(labels.dontcare) == [1]
    np.testing.assert_allclose(labels.dontcare[1], [[219.31, 188.49, 26.19, 30.07]])
    assert kitti_type("person_sitting") == "Person" and kitti_type("CAR") == "Car" and kitti_type("Bus") is None


def test_write_then_read_round_trips_gt_and_results(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(GT_ROWS)
    labels = read_kitti_labels(src)
    table = labels.table
    table.classes = np.array([2, 6, 2, 5])
    out = write_kitti_labels(tmp_path / "b.txt", table, dict(enumerate(KITTI_TYPES, start=1)), labels.dontcare)
    again = read_kitti_labels(out)
    np.testing.assert_allclose(again.table.boxes, table.boxes, atol=1e-6)
    np.testing.assert_allclose(again.table.extras["kitti_3d"], table.extras["kitti_3d"], atol=1e-6)
    assert list(again.table.extras["type"]) == ["Van", "Cyclist", "Van", "Person"]
    assert again.table.ids.tolist() == table.ids.tolist() and again.table.frames.tolist() == table.frames.tolist()
    np.testing.assert_allclose(again.dontcare[1], labels.dontcare[1])

    table.scores = np.array([0.9, 0.8, 0.7, 0.6])
    out = write_kitti_labels(tmp_path / "r.txt", table, dict(enumerate(KITTI_TYPES, start=1)), results=True)
    lines = out.read_text().splitlines()
    assert all(len(line.split()) == 18 for line in lines) and lines[0].split()[:5] == ["0", "0", "Van", "-1", "-1"]
    np.testing.assert_allclose(read_kitti_labels(out).table.scores, table.scores)
    with pytest.raises(DataError, match="class id"):
        write_kitti_labels(tmp_path / "x.txt", table, {2: "Van"})


@pytest.mark.parametrize("row, problem", [
    ("0 1 Car 0 0 -1 10 10 50", "expected 17 columns"),
    ("0 1 5 0 0 -1 10 10 50 50", "column 3 must be the object type"),
    ("0 1 Car 0 0 -1 10 ten 50 50", "not a number"),
    ("-1 1 Car 0 0 -1 10 10 50 50", "frame must be an integer >= 0"),
    ("0 1 Car 0 0 -1 50 10 10 50", "box with no area"),
    ("0 -1 Car 0 0 -1 10 10 50 50", "negative track id"),
    ("0 7 Car 0 0 -1 10 10 50 50", "track id 7 appears twice in frame 0"),
])
def test_bad_rows_name_file_and_line_or_are_counted(tmp_path, row, problem):
    path = tmp_path / "0003.txt"
    path.write_text(f"0 7 Car 0 0 -1 1 1 20 20\n{row}\n1 7 Car 0 0 -1 2 2 21 21\n")
    with pytest.raises(DataError, match=rf"0003.txt: line 2: {problem}"):
        read_kitti_labels(path)
    labels = read_kitti_labels(path, skip_bad=True)
    assert labels.table.frames.tolist() == [1, 2] and len(labels.skipped) == 1
    assert labels.skipped[0].startswith("line 2: ")


# --------------------------------------------------------------------------- parity with TrackEval Kitti2DBox
def _row(frame, track, kind, box, truncated=0, occluded=0, score=None):
    x0, y0, x1, y1 = box
    tail = "" if score is None else f" {score:.4f}"
    return (f"{frame} {track} {kind} {truncated} {occluded} -10 {x0:.3f} {y0:.3f} {x1:.3f} {y1:.3f} "
            f"-1 -1 -1 -1000 -1000 -1000 -10{tail}")


def _kitti_sequence(rng, length):
    """(gt lines, results lines): cars, vans, pedestrians, sitting persons, cyclists; occluded / truncated gt,
    DontCare regions; results with jitter, misses, an identity switch, false positives (some small, some inside
    DontCare, some on vans and sitting persons)."""
    kinds = ["Car", "Car", "Car", "Van", "Pedestrian", "Pedestrian", "Person", "Cyclist"]
    objects = []
    for k, kind in enumerate(kinds):
        start, stop = int(rng.integers(0, length // 3)), int(rng.integers(2 * length // 3, length + 1))
        size = (rng.uniform(60, 140), rng.uniform(40, 90)) if kind in ("Car", "Van") else (rng.uniform(20, 40),
                                                                                            rng.uniform(30, 90))
        objects.append((k, kind, start, stop, rng.uniform(0, 1000, 1)[0], rng.uniform(100, 250), size,
                        rng.normal(0, 5)))
    gt, res = [], []
    for t in range(length):
        for x0, y0 in rng.uniform([0, 0], [1000, 300], (int(rng.integers(0, 3)), 2)):
            gt.append(_row(t, -1, "DontCare", (x0, y0, x0 + rng.uniform(30, 120), y0 + rng.uniform(20, 60)), -1, -1))
        for k, kind, start, stop, x, y, (w, h), v in objects:
            if not start <= t < stop:
                continue
            box = (x + v * t, y, x + v * t + w, y + h)
            occluded = int(rng.choice([0, 1, 2, 3], p=[0.6, 0.2, 0.1, 0.1]))
            truncated = int(rng.choice([0, 1, 2], p=[0.85, 0.1, 0.05]))
            gt.append(_row(t, k, kind, box, truncated, occluded))
            if rng.random() < 0.1:
                continue  # missed
            track = (3 - k if k in (1, 2) and t > length // 2 else k) + 100  # identity switch
            label = {"Van": "Car", "Person": "Pedestrian"}.get(kind, kind) if rng.random() < 0.7 else kind
            jitter = rng.normal(0, 3, 4)
            res.append(_row(t, track, label, tuple(np.add(box, jitter)), score=float(rng.uniform(0.3, 1))))
        for j in range(int(rng.integers(0, 3))):  # false positives: normal, tiny, or inside a DontCare region
            x0, y0 = rng.uniform([0, 0], [1000, 300])
            h = rng.choice([60.0, 20.0, 25.0])
            res.append(_row(t, 500 + 10 * t + j, rng.choice(["Car", "Pedestrian"]), (x0, y0, x0 + 40, y0 + h),
                            score=0.5))
        dontcare = [line for line in gt if line.startswith(f"{t} -1 DontCare")]
        if dontcare:
            x0, y0, x1, y1 = (float(v) for v in dontcare[0].split()[6:10])
            res.append(_row(t, 900 + t, "Car", (x0 + 1, y0 + 1, x0 + 0.8 * (x1 - x0), y1 + 10), score=0.4))
    return gt, res


def _trackeval_kitti(gt_fol, trackers):
    config = {**trackeval.Evaluator.get_default_eval_config(), "PRINT_RESULTS": False, "PRINT_CONFIG": False,
              "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False, "USE_PARALLEL": False,
              "TIME_PROGRESS": False, "DISPLAY_LESS_PROGRESS": True}
    dataset = trackeval.datasets.Kitti2DBox({"GT_FOLDER": str(gt_fol), "TRACKERS_FOLDER": str(trackers),
                                             "TRACKERS_TO_EVAL": ["mine"], "PRINT_CONFIG": False,
                                             "OUTPUT_FOLDER": str(trackers.parent / "out")})
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
               trackeval.metrics.Identity({"PRINT_CONFIG": False})]
    official, _ = trackeval.Evaluator(config).evaluate([dataset], metrics)
    return official["Kitti2DBox"]["mine"]


def test_per_class_metrics_match_trackeval_kitti2dbox(tmp_path):
    rng = np.random.default_rng(7)
    gt_fol, trackers = tmp_path / "gt", tmp_path / "trackers"
    (gt_fol / "label_02").mkdir(parents=True)
    (trackers / "mine" / "data").mkdir(parents=True)
    lengths = {"0000": 40, "0001": 30, "0002": 35}
    for seq, length in lengths.items():
        gt, res = _kitti_sequence(rng, length)
        (gt_fol / "label_02" / f"{seq}.txt").write_text("\n".join(gt) + "\n")
        (trackers / "mine" / "data" / f"{seq}.txt").write_text("\n".join(res) + "\n")
    (gt_fol / "evaluate_tracking.seqmap.training").write_text(
        "".join(f"{seq} empty 000000 {n:06d}\n" for seq, n in lengths.items()))
    theirs = _trackeval_kitti(gt_fol, trackers)
    ours = evaluate_tracking(gt_fol, trackers / "mine")
    assert ours["format"] == "kitti" and ours["classes"] == ["Car", "Pedestrian"]
    for seq in (*lengths, "COMBINED_SEQ"):
        for cls, name in (("car", "Car"), ("pedestrian", "Pedestrian")):
            res = theirs[seq][cls]
            mine = ours["combined"][name] if seq == "COMBINED_SEQ" else ours["sequences"][seq][name]
            for key in ("HOTA", "DetA", "AssA", "LocA"):
                assert mine[key] == pytest.approx(float(np.mean(res["HOTA"][key])), abs=1e-9), (seq, cls, key)
            for key in ("MOTA", "MOTP", "IDSW", "CLR_FP", "CLR_FN", "CLR_TP"):
                assert mine[key] == pytest.approx(res["CLEAR"][key], abs=1e-9), (seq, cls, key)
            for key in ("IDF1", "IDP", "IDR"):
                assert mine[key] == pytest.approx(res["Identity"][key], abs=1e-9), (seq, cls, key)
    car = ours["combined"]["Car"]
    assert 0.2 < car["MOTA"] < 0.95 and car["IDSW"] > 0  # the perturbation is really scored
    averaged = ours["combined"]["class_averaged"]
    assert averaged["HOTA"] == pytest.approx((car["HOTA"] + ours["combined"]["Pedestrian"]["HOTA"]) / 2)


def test_kitti_rules_dontcare_and_distractors_remove_false_positives(tmp_path):
    gt = [_row(0, -1, "DontCare", (500, 100, 600, 200), -1, -1), _row(0, 1, "Car", (10, 10, 110, 80)),
          _row(0, 2, "Van", (200, 10, 300, 80)), _row(0, 3, "Car", (350, 10, 450, 80), occluded=3)]
    res = [_row(0, 1, "Car", (10, 10, 110, 80), score=1), _row(0, 2, "Car", (200, 10, 300, 80), score=1),
           _row(0, 3, "Car", (350, 10, 450, 80), score=1), _row(0, 4, "Car", (510, 110, 590, 190), score=1),
           _row(0, 5, "Car", (700, 10, 740, 30), score=1)]  # inside DontCare; 20 px high
    (tmp_path / "gt" / "label_02").mkdir(parents=True)
    (tmp_path / "gt" / "label_02" / "0000.txt").write_text("\n".join(gt) + "\n")
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "0000.txt").write_text("\n".join(res) + "\n")
    car = evaluate_tracking(tmp_path / "gt", tmp_path / "res")["combined"]["Car"]
    assert car["CLR_TP"] == 1 and car["CLR_FP"] == 0 and car["CLR_FN"] == 0 and car["MOTA"] == pytest.approx(1.0)
