"""digits-mot: the built-in tracking dataset is valid MOTChallenge data (our reader and TrackEval's)."""
import numpy as np
import pytest
import trackeval

from vistra.cli import main
from vistra.data.digits_mot import make_digits_mot
from vistra.data.errors import DataError
from vistra.tracking.evaluate import evaluate_tracking
from vistra.tracking.mot_io import find_sequences, read_class_names, read_gt, read_seqinfo, write_mot_txt


@pytest.fixture(scope="module")
def digits_mot(tmp_path_factory):
    out = tmp_path_factory.mktemp("dm") / "digits-mot"
    summary = make_digits_mot(out, n_train=3, n_val=2, length=40, size=(128, 96), digit_size=(16, 28),
                              max_objects=6, seed=0)
    return out, summary


def test_layout_is_readable_and_motion_is_as_documented(digits_mot):
    out, summary = digits_mot
    assert (out / "README.txt").read_text().startswith("vistra digits-mot dataset")
    entered, left, occluded = 0, 0, 0
    for split in ("train", "val"):
        seqs = find_sequences(out / split)
        assert [s.name for s in seqs] == summary["sequences"][split]
        assert read_class_names(out / split) == {d: str(d) for d in range(10)}
        for seq in seqs:
            info = read_seqinfo(seq)
            assert (info.length, info.width, info.height) == (40, 128, 96)
            assert len(list((seq / "img1").glob("*.jpg"))) == 40 and info.frame_path(seq, 40).is_file()
            gt = read_gt(seq)  # raises on any malformed row
            assert gt.skipped == [] and set(gt.classes) <= set(range(10)) and (gt.scores == 1).all()
            assert ((gt.visibility >= 0) & (gt.visibility <= 1)).all()
            xyxy = gt.xyxy()
            assert (xyxy[:, :2] >= 0).all() and (xyxy[:, 2] <= 128).all() and (xyxy[:, 3] <= 96).all()
            for track in np.unique(gt.ids):
                frames = gt.frames[gt.ids == track]
                entered += frames.min() > 1
                left += frames.max() < 40
                assert len(set(gt.classes[gt.ids == track])) == 1  # a digit keeps its class
            occluded += int((gt.visibility < 0.5).sum())
    assert entered > 0 and left > 0 and occluded > 0  # objects enter, leave and get hidden
    assert summary["boxes"]["train"] > 0 and summary["tracks"]["val"] >= 4


def test_readable_by_trackeval_and_perfect_results_score_one(digits_mot, tmp_path):
    out, summary = digits_mot
    seqs = {s: None for s in summary["sequences"]["val"]}  # lengths from seqinfo.ini
    for seq in find_sequences(out / "val"):
        gt = read_gt(seq)
        gt.classes[:] = -1  # TrackEval's MOTChallenge reader takes single-class results
        write_mot_txt(tmp_path / "trackers" / "gt" / "data" / f"{seq.name}.txt", gt)
    config = {**trackeval.Evaluator.get_default_eval_config(), "PRINT_RESULTS": False, "PRINT_CONFIG": False,
              "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False, "USE_PARALLEL": False,
              "TIME_PROGRESS": False}
    dataset = trackeval.datasets.MotChallenge2DBox({
        "GT_FOLDER": str(out / "val"), "TRACKERS_FOLDER": str(tmp_path / "trackers"), "SKIP_SPLIT_FOL": True,
        "SEQ_INFO": seqs, "DO_PREPROC": False, "PRINT_CONFIG": False})
    results, _ = trackeval.Evaluator(config).evaluate([dataset], [trackeval.metrics.HOTA()])
    assert np.mean(results["MotChallenge2DBox"]["gt"]["COMBINED_SEQ"]["pedestrian"]["HOTA"]["HOTA"]) == 1.0
    ours = evaluate_tracking(out / "val", tmp_path / "trackers" / "gt", class_agnostic=True)
    assert ours["combined"]["all"]["HOTA"] == pytest.approx(1.0)


def test_same_seed_same_data_and_foreign_folders_refused(digits_mot, tmp_path):
    out, _ = digits_mot
    again = make_digits_mot(tmp_path / "again", n_train=3, n_val=2, length=40, size=(128, 96), digit_size=(16, 28),
                            max_objects=6, seed=0)
    first = sorted(find_sequences(out / "val"))[0]
    assert (tmp_path / "again" / "val" / first.name / "gt" / "gt.txt").read_text() == \
        (first / "gt" / "gt.txt").read_text()
    assert again["boxes"]["val"] > 0
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not made by make_digits_mot"):
        make_digits_mot(tmp_path / "foreign", n_train=1, n_val=0, length=4, size=(64, 48), digit_size=(8, 16))
    with pytest.raises(ValueError, match="digit_size"):
        make_digits_mot(tmp_path / "x", size=(64, 48), digit_size=(8, 40))


def test_cli_make_digits_mot(tmp_path, capsys):
    assert main(["data", "make", "digits-mot", str(tmp_path / "d"), "--train", "1", "--val", "1", "--length", "5",
                 "--size", "64", "48", "--digit-size", "8", "16", "--max-objects", "3"]) == 0
    assert "wrote digits-mot" in capsys.readouterr().out
    assert len(find_sequences(tmp_path / "d" / "train")) == 1
