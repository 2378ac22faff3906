"""HOTA / CLEAR / Identity through trackeval: perfect results, parity with py-motmetrics and with TrackEval's own
MOTChallenge pipeline (distractors, ignored rows), multi-class scoring, bad input, the CLI."""
import json

import motmetrics as mm
import numpy as np
import pytest
import trackeval

from vistra.cli import main
from vistra.data.errors import DataError
from vistra.tracking.evaluate import evaluate_tracking
from vistra.tracking.mot_io import MotTable, SeqInfo, read_mot_txt, write_class_names, write_mot_txt, write_seqinfo


def _make_sequence(root, name, length, n_objects, rng, classes=(1,), distractors=False):
    """A sequence of objects walking with noise; returns the gt table. distractors: add MOT17 extras
    (static persons, distractors, flag-0 rows)."""
    rows = []
    for k in range(n_objects):
        start, stop = int(rng.integers(0, length // 3)), int(rng.integers(2 * length // 3, length + 1))
        pos, vel = rng.uniform(0, 400, 2), rng.normal(0, 4, 2)
        cls = int(rng.choice(classes))
        for t in range(start, stop):
            x, y = pos + vel * t
            rows.append((t + 1, k + 1, round(x, 2), round(y, 2), 40, 80, 1, cls, 1))
    if distractors:
        for t in range(length):
            rows.append((t + 1, 900, 300.0, 300.0, 40, 80, 1, 7, 1))  # static person
            rows.append((t + 1, 901, 100.0 + t, 350.0, 40, 80, 1, 8, 0.5))  # distractor
            rows.append((t + 1, 902, 50.0, 50.0 + t, 40, 80, 0, 1, 0.2))  # pedestrian flagged 0 (ignored)
    write_seqinfo(root / name, SeqInfo(name, length, 30, 640, 480))
    gt = MotTable.from_rows(rows)
    write_mot_txt(root / name / "gt" / "gt.txt", gt, gt=True)
    return gt


def _perturb(gt, rng, keep_classes=None):
    """Results from gt: drop 10 % of boxes, jitter, swap two IDs halfway, add false positives."""
    rows = []
    for f, i, (x, y, w, h), c in zip(gt.frames, gt.ids, gt.boxes, gt.classes):
        if rng.random() < 0.1 or (keep_classes is not None and c not in keep_classes):
            continue
        if i in (1, 2) and f > 10:
            i = 3 - i  # identity switch
        rows.append((f, i + 100, x + rng.normal(0, 3), y + rng.normal(0, 3), w, h, 0.9, c, -1))
    for f in range(1, int(gt.frames.max()) + 1, 3):
        rows.append((f, 500 + f, float(rng.uniform(0, 500)), float(rng.uniform(0, 400)), 40, 80, 0.5, 1, -1))
    return MotTable.from_rows(rows)


@pytest.fixture
def mot_data(tmp_path):
    rng = np.random.default_rng(0)
    gt_root, res = tmp_path / "gt", tmp_path / "res"
    for name in ("SEQ-01", "SEQ-02"):
        gt = _make_sequence(gt_root, name, 30, 6, rng)
        write_mot_txt(res / f"{name}.txt", _perturb(gt, rng))
    return gt_root, res


def test_perfect_results_score_one(tmp_path):
    rng = np.random.default_rng(1)
    gt = _make_sequence(tmp_path / "gt", "SEQ-01", 25, 5, rng, distractors=True)
    perfect = gt.select((gt.classes == 1) & (gt.scores == 1))
    write_mot_txt(tmp_path / "res" / "SEQ-01.txt", perfect)
    report = evaluate_tracking(tmp_path / "gt", tmp_path / "res")
    combined = report["combined"]["pedestrian"]
    assert combined["HOTA"] == pytest.approx(1.0) and combined["MOTA"] == pytest.approx(1.0)
    assert combined["IDF1"] == pytest.approx(1.0) and combined["GT_IDs"] == 5


def test_mota_idf1_match_py_motmetrics(mot_data, monkeypatch):
    if not hasattr(np, "asfarray"):  # py-motmetrics 1.4 calls np.asfarray, removed in NumPy 2
        monkeypatch.setattr(np, "asfarray", lambda a, dtype=float: np.asarray(a, dtype=dtype), raising=False)
    gt_root, res = mot_data
    report = evaluate_tracking(gt_root, res)
    accumulators, names = [], []
    for name in ("SEQ-01", "SEQ-02"):
        gt = mm.io.loadtxt(str(gt_root / name / "gt" / "gt.txt"), fmt="mot15-2D", min_confidence=1)
        ts = mm.io.loadtxt(str(res / f"{name}.txt"), fmt="mot15-2D")
        accumulators.append(mm.utils.compare_to_groundtruth(gt, ts, "iou", distth=0.5))
        names.append(name)
    summary = mm.metrics.create().compute_many(accumulators, names=names, metrics=["mota", "idf1", "num_switches"],
                                               generate_overall=True)
    for name in names:
        ours = report["sequences"][name]["pedestrian"]
        assert ours["MOTA"] == pytest.approx(summary.loc[name, "mota"], abs=1e-9)
        assert ours["IDF1"] == pytest.approx(summary.loc[name, "idf1"], abs=1e-9)
    overall = report["combined"]["pedestrian"]
    assert overall["MOTA"] == pytest.approx(summary.loc["OVERALL", "mota"], abs=1e-9)
    assert overall["IDF1"] == pytest.approx(summary.loc["OVERALL", "idf1"], abs=1e-9)
    assert 0.3 < overall["MOTA"] < 0.95 and overall["IDSW"] > 0  # the perturbation is really scored


def test_mot17_preprocessing_matches_trackeval_pipeline(tmp_path):
    rng = np.random.default_rng(2)
    gt_root, trackers = tmp_path / "gt", tmp_path / "trackers"
    seqs = {}
    for name in ("MOT17-01", "MOT17-02"):
        gt = _make_sequence(gt_root, name, 30, 6, rng, distractors=True)
        results = _perturb(gt, rng)
        results.classes[:] = -1  # TrackEval reads column 8 as the class and accepts only pedestrians
        write_mot_txt(trackers / "mine" / "data" / f"{name}.txt", results)
        seqs[name] = 30
    ours = evaluate_tracking(gt_root, trackers / "mine")
    config = {**trackeval.Evaluator.get_default_eval_config(), "PRINT_RESULTS": False, "PRINT_CONFIG": False,
              "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False, "OUTPUT_EMPTY_CLASSES": False,
              "USE_PARALLEL": False, "TIME_PROGRESS": False, "DISPLAY_LESS_PROGRESS": True}
    dataset = trackeval.datasets.MotChallenge2DBox({"GT_FOLDER": str(gt_root), "TRACKERS_FOLDER": str(trackers),
                                                    "SKIP_SPLIT_FOL": True, "SEQ_INFO": seqs, "PRINT_CONFIG": False,
                                                    "TRACKERS_TO_EVAL": ["mine"]})
    metrics = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
               trackeval.metrics.Identity({"PRINT_CONFIG": False})]
    official, _ = trackeval.Evaluator(config).evaluate([dataset], metrics)
    theirs = official["MotChallenge2DBox"]["mine"]
    for seq in (*seqs, "COMBINED_SEQ"):
        res = theirs[seq]["pedestrian"]
        mine = ours["combined"]["pedestrian"] if seq == "COMBINED_SEQ" else ours["sequences"][seq]["pedestrian"]
        assert mine["HOTA"] == pytest.approx(float(np.mean(res["HOTA"]["HOTA"])), abs=1e-12)
        assert mine["AssA"] == pytest.approx(float(np.mean(res["HOTA"]["AssA"])), abs=1e-12)
        for key in ("MOTA", "MOTP", "IDSW", "CLR_FP", "CLR_FN"):
            assert mine[key] == pytest.approx(res["CLEAR"][key], abs=1e-12)
        assert mine["IDF1"] == pytest.approx(res["Identity"]["IDF1"], abs=1e-12)
    assert ours["combined"]["pedestrian"]["CLR_FP"] < sum(len(read_mot_txt(p)) for p in
                                                          (trackers / "mine" / "data").glob("*.txt"))


def test_multi_class_scores_each_class_and_all(tmp_path):
    rng = np.random.default_rng(3)
    gt_root, res = tmp_path / "gt", tmp_path / "res"
    gt = _make_sequence(gt_root, "cars-01", 20, 6, rng, classes=(1, 2))
    write_class_names(gt_root, {1: "car", 2: "van"})
    results = gt.select(gt.classes >= 0)
    results.classes = np.where(results.ids == results.ids[results.classes == 2][0], 1, results.classes)  # one van
    write_mot_txt(res / "cars-01.txt", results)  # ... labelled car: a miss for van, a false positive for car
    report = evaluate_tracking(gt_root, res)
    car, van, both = (report["combined"][k] for k in ("car", "van", "all"))
    assert car["CLR_FP"] > 0 and car["CLR_FN"] == 0 and van["CLR_FN"] > 0 and van["CLR_FP"] == 0
    assert both["CLR_FP"] == car["CLR_FP"] and both["CLR_FN"] == van["CLR_FN"]
    agnostic = evaluate_tracking(gt_root, res, class_agnostic=True)["combined"]["all"]
    assert agnostic["MOTA"] == pytest.approx(1.0) and agnostic["IDF1"] == pytest.approx(1.0)


def test_bad_results_are_clear_errors_or_counted(mot_data):
    gt_root, res = mot_data
    (res / "SEQ-02.txt").rename(res / "other.txt")
    with pytest.raises(DataError, match="no results for sequence SEQ-02"):
        evaluate_tracking(gt_root, res)
    (res / "other.txt").write_text("1,1,5,5,10,10,1,1\n1,1,6,6,10,10,1,1\n31,2,5,5,10,10,1,1\n")
    (res / "other.txt").rename(res / "SEQ-02.txt")
    with pytest.raises(DataError, match="SEQ-02.txt: line 2: id 1 appears twice"):
        evaluate_tracking(gt_root, res)
    with pytest.raises(DataError, match="results for frame 31, but the sequence has 30 frames"):
        evaluate_tracking(gt_root, res, skip_bad=True)


def test_cli_eval_track_prints_table_and_writes_json(mot_data, capsys):
    gt_root, res = mot_data
    assert main(["eval", "track", str(gt_root), str(res)]) == 0
    out = capsys.readouterr().out
    assert "HOTA" in out and "IDF1" in out and "COMBINED" in out and "SEQ-02" in out
    saved = json.loads((res / "track_metrics.json").read_text())
    assert 0 < saved["combined"]["pedestrian"]["HOTA"] < 1
    assert main(["eval", "track", str(gt_root), str(gt_root / "missing")]) == 2
    assert "vistra: error:" in capsys.readouterr().err
