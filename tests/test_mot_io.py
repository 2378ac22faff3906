"""MOTChallenge files: reader (filters, malformed rows), writer round trip, seqinfo.ini, classes.txt."""
import numpy as np
import pytest

from vistra.data.errors import DataError
from vistra.tracking.mot_io import (
    MOT17_PEDESTRIANS,
    GtFilter,
    MotTable,
    SeqInfo,
    filter_gt,
    find_sequences,
    read_class_names,
    read_gt,
    read_mot_txt,
    read_seqinfo,
    write_class_names,
    write_mot_txt,
    write_seqinfo,
)

MOT17_GT = """\
1,1,10,20,30,60,1,1,1.0
1,2,50,20,30,60,1,1,0.2
1,3,90,20,30,60,0,1,1.0
1,4,130,20,30,60,1,7,1.0
2,1,12,20,30,60,1,1,0.9
2,5,200,20,30,60,1,2,0.5
"""


def test_reader_columns_and_mot17_filters(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text(MOT17_GT)
    table = read_mot_txt(path)
    assert len(table) == 6 and table.skipped == []
    assert table.frames.tolist() == [1, 1, 1, 1, 2, 2]
    np.testing.assert_allclose(table.boxes[1], [50, 20, 30, 60])
    np.testing.assert_allclose(table.xyxy()[1], [50, 20, 80, 80])
    assert table.classes.tolist() == [1, 1, 1, 7, 1, 2]
    pedestrians = filter_gt(table, MOT17_PEDESTRIANS)  # class 1 and considered (flag 1)
    assert list(zip(pedestrians.frames, pedestrians.ids)) == [(1, 1), (1, 2), (2, 1)]
    visible = filter_gt(table, GtFilter(classes=(1,), min_visibility=0.5))
    assert visible.ids.tolist() == [1, 1]
    every = filter_gt(table, GtFilter(classes=None, considered_only=False))
    assert len(every) == 6


def test_short_rows_get_defaults_and_det_files_allow_repeated_minus_one(tmp_path):
    path = tmp_path / "det.txt"
    path.write_text("1 -1 5 5 10 10\n1 -1 30 5 10 10 0.75\n")  # space separated, ids -1 as det.txt
    table = read_mot_txt(path)
    assert table.scores.tolist() == [1.0, 0.75] and table.classes.tolist() == [-1, -1]
    assert table.visibility.tolist() == [-1, -1]
    # unknown class and visibility pass any filter (MOT15-style files)
    assert len(filter_gt(table, GtFilter(classes=(1,), min_visibility=0.5))) == 2


@pytest.mark.parametrize("line, problem", [
    ("1,2,3", "at least 6 columns"),
    ("1,2,a,4,5,6", "not a number"),
    ("1,2,nan,4,5,6", "NaN"),
    ("0,2,3,4,5,6", "frame must be an integer >= 1"),
    ("1.5,2,3,4,5,6", "frame must be an integer >= 1"),
    ("1,2,3,4,0,6", "no area"),
    ("1,1,3,4,5,6", "appears twice in frame 1"),
])
def test_malformed_rows_name_file_and_line_or_are_counted(tmp_path, line, problem):
    path = tmp_path / "gt.txt"
    path.write_text(f"1,1,0,0,5,5,1,1,1\n\n{line}\n2,1,1,1,5,5,1,1,1\n")
    with pytest.raises(DataError) as err:
        read_mot_txt(path)
    assert str(path) in str(err.value) and "line 3" in str(err.value) and problem in str(err.value)
    table = read_mot_txt(path, skip_bad=True)
    assert len(table) == 2 and len(table.skipped) == 1 and table.skipped[0].startswith("line 3:")
    assert problem in table.skipped[0]


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read MOTChallenge file"):
        read_mot_txt(tmp_path / "nope.txt")


def test_writer_reader_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rows = [(f, i, *np.round(rng.uniform(1, 100, 4), 2), round(float(rng.uniform()), 4), int(rng.integers(0, 10)),
             round(float(rng.uniform()), 3)) for f in (3, 1, 2) for i in (7, 2)]
    table = MotTable.from_rows(rows)
    for gt in (True, False):
        back = read_mot_txt(write_mot_txt(tmp_path / f"t{gt}.txt", table, gt=gt))
        order = np.lexsort((table.ids, table.frames))
        assert back.frames.tolist() == table.frames[order].tolist() and back.ids.tolist() == table.ids[order].tolist()
        np.testing.assert_allclose(back.boxes, table.boxes[order])
        np.testing.assert_allclose(back.scores, table.scores[order])
        assert back.classes.tolist() == table.classes[order].tolist()
        np.testing.assert_allclose(back.visibility, table.visibility[order] if gt else -1)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves nothing behind


def test_seqinfo_round_trip_gt_bounds_and_sequences(tmp_path):
    seq = tmp_path / "root" / "SEQ-01"
    info = SeqInfo("SEQ-01", 3, 25.0, 640, 480, "img1", ".jpg")
    write_seqinfo(seq, info)
    assert read_seqinfo(seq) == info
    assert info.frame_path(seq, 2) == seq / "img1" / "000002.jpg"
    (seq / "gt").mkdir()
    (seq / "gt" / "gt.txt").write_text("1,1,0,0,5,5,1,1,1\n4,1,0,0,5,5,1,1,1\n")
    with pytest.raises(DataError, match="after the last frame 3"):
        read_gt(seq)
    kept = read_gt(seq, MOT17_PEDESTRIANS, skip_bad=True)
    assert kept.frames.tolist() == [1] and "after the last frame" in kept.skipped[0]
    assert find_sequences(tmp_path / "root") == [seq] and find_sequences(seq) == [seq]
    with pytest.raises(DataError, match="no MOTChallenge sequence"):
        find_sequences(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "seqinfo.ini").write_text("[Sequence]\nname=x\n")
    with pytest.raises(DataError, match="seqinfo.ini: not a valid"):
        read_seqinfo(tmp_path / "bad")


def test_class_names_file(tmp_path):
    assert read_class_names(tmp_path) is None
    write_class_names(tmp_path, {3: "car", 1: "pedestrian"})
    assert read_class_names(tmp_path) == {1: "pedestrian", 3: "car"}
    (tmp_path / "classes.txt").write_text("1 pedestrian\ncar\n")
    with pytest.raises(DataError, match="line 2"):
        read_class_names(tmp_path)


def test_unreadable_text_files_are_one_error_naming_them(tmp_path):
    """A missing file and a binary (non-UTF-8) file each give DataError "<path>: cannot read ..."."""
    from vistra.data.errors import read_text_lines
    from vistra.tracking.kitti_io import read_kitti_labels

    binary = tmp_path / "gt.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    with pytest.raises(DataError, match=rf"{binary}: cannot read MOTChallenge file \("):
        read_mot_txt(binary)
    with pytest.raises(DataError, match=rf"{binary}: cannot read KITTI label file \("):
        read_kitti_labels(binary)
    with pytest.raises(DataError, match=r"missing\.txt: cannot read notes \(No such file or directory\)"):
        read_text_lines(tmp_path / "missing.txt", "notes")
    (tmp_path / "ok.txt").write_text("a\r\nb\n")
    assert read_text_lines(tmp_path / "ok.txt", "notes") == ["a", "b"]
