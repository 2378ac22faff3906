"""UA-DETRAC XML: reading a real-layout file, writing it back, malformed / truncated XML, bad targets, and the
ignored-region rule of the evaluation (boxes mostly inside an ignored region are neither misses nor false
positives)."""
import numpy as np
import pytest

from vistra.data.errors import DataError
from vistra.tracking.detrac_io import DETRAC_TYPES, read_detrac_xml, write_detrac_xml
from vistra.tracking.eval_rules import share_inside
from vistra.tracking.evaluate import evaluate_tracking
from vistra.tracking.mot_io import MotTable, write_mot_txt

SAMPLE = """<?xml version="1.0" encoding="utf-8"?>
<sequence name="MVI_20011">
    <sequence_attribute camera_state="unstable" sence_weather="sunny"/>
    <ignored_region>
        <box left="778.75" top="24.75" width="181.75" height="63.5"/>
        <box left="930.75" top="94.75" width="29.75" height="33.5"/>
    </ignored_region>
    <frame density="2" num="1">
        <target_list>
            <target id="1">
                <box left="592.75" top="378.8" width="160.05" height="162.2"/>
                <attribute orientation="18.488" speed="6.859" trajectory_length="5" truncation_ratio="0.1" vehicle_type="car"/>
                <occlusion>
                    <region_overlap left="553" top="88.27" width="27.45" height="1.52" occlusion_id="5" occlusion_status="1"/>
                </occlusion>
            </target>
            <target id="2">
                <box left="557.65" top="120.98" width="47.2" height="43.06"/>
                <attribute orientation="19.398" speed="1.5055" trajectory_length="72" truncation_ratio="0" vehicle_type="bus"/>
            </target>
        </target_list>
    </frame>
    <frame density="1" num="3">
        <target_list>
            <target id="1">
                <box left="595" top="380" width="160" height="162"/>
                <attribute orientation="18" speed="6" trajectory_length="5" truncation_ratio="0" vehicle_type="car"/>
            </target>
        </target_list>
    </frame>
</sequence>
"""


def test_read_real_layout(tmp_path):
    path = tmp_path / "MVI_20011.xml"
    path.write_text(SAMPLE)
    labels = read_detrac_xml(path)
    t = labels.table
    assert labels.name == "MVI_20011" and labels.attributes == {"camera_state": "unstable", "sence_weather": "sunny"}
    assert t.frames.tolist() == [1, 1, 3] and t.ids.tolist() == [1, 2, 1]
    assert list(t.extras["type"]) == ["car", "bus", "car"] and t.extras["line"].tolist() == [10, 17, 25]
    np.testing.assert_allclose(t.boxes[1], [557.65, 120.98, 47.2, 43.06])
    assert t.extras["attributes"][0] == {"orientation": "18.488", "speed": "6.859", "trajectory_length": "5",
                                         "truncation_ratio": "0.1"}
    np.testing.assert_allclose(labels.ignored, [[778.75, 24.75, 181.75, 63.5], [930.75, 94.75, 29.75, 33.5]])


def test_write_then_read_round_trips(tmp_path):
    (tmp_path / "a.xml").write_text(SAMPLE)
    labels = read_detrac_xml(tmp_path / "a.xml")
    table = labels.table
    table.classes = np.array([1, 2, 1])
    out = write_detrac_xml(tmp_path / "b.xml", labels.name, table, dict(enumerate(DETRAC_TYPES, start=1)),
                           labels.ignored, labels.attributes)
    again = read_detrac_xml(out)
    np.testing.assert_allclose(again.table.boxes, table.boxes)
    np.testing.assert_allclose(again.ignored, labels.ignored)
    assert again.table.frames.tolist() == [1, 1, 3] and list(again.table.extras["type"]) == ["car", "bus", "car"]
    assert list(again.table.extras["attributes"]) == list(table.extras["attributes"])
    assert again.attributes == labels.attributes and again.name == "MVI_20011"


@pytest.mark.parametrize("edit, line, problem", [
    (("</occlusion>\n            </target>", "</occlusion>\n            </targte>"), 16, "mismatched tag"),
    (("<target id=\"2\">", "<target id=\"2\" id=\"3\">"), 17, "duplicate attribute"),
])
def test_malformed_xml_names_file_and_line(tmp_path, edit, line, problem):
    path = tmp_path / "bad.xml"
    path.write_text(SAMPLE.replace(*edit))
    with pytest.raises(DataError, match=rf"bad.xml: line {line}: not well-formed XML \({problem}"):
        read_detrac_xml(path)


def test_truncated_xml_keeps_the_complete_frames_with_skip_bad(tmp_path):
    path = tmp_path / "cut.xml"
    path.write_text(SAMPLE[:SAMPLE.index("<frame density=\"1\" num=\"3\">") + 60])
    with pytest.raises(DataError, match=r"cut.xml: line \d+: not well-formed XML \(no element found"):
        read_detrac_xml(path)
    labels = read_detrac_xml(path, skip_bad=True)
    assert labels.table.frames.tolist() == [1, 1] and len(labels.ignored) == 2
    assert len(labels.skipped) == 1 and "last frame read: 1" in labels.skipped[0]


@pytest.mark.parametrize("edit, problem", [
    (('<box left="557.65"', '<box left="x557"'), "non-numeric value"),
    (('width="47.2"', 'width="0"'), "no area"),
    ((' vehicle_type="bus"', ""), "no <attribute vehicle_type"),
    (('<target id="2">', '<target id="1">'), "target id 1 appears twice in frame 1"),
    (('<target id="2">', '<target id="two">'), "target id must be an integer"),
])
def test_bad_targets_name_the_line_or_are_counted(tmp_path, edit, problem):
    path = tmp_path / "t.xml"
    path.write_text(SAMPLE.replace(*edit))
    with pytest.raises(DataError, match=rf"t.xml: line 17: .*{problem}"):
        read_detrac_xml(path)
    labels = read_detrac_xml(path, skip_bad=True)
    assert labels.table.ids.tolist() == [1, 1] and len(labels.skipped) == 1


def test_not_a_detrac_file(tmp_path):
    (tmp_path / "x.xml").write_text("<annotation><object/></annotation>")
    with pytest.raises(DataError, match="root element is <annotation>"):
        read_detrac_xml(tmp_path / "x.xml")


def test_share_inside_counts_overlapping_regions_once():
    regions = np.array([[0.0, 0, 10, 10], [5, 0, 10, 10]])  # union: 15 x 10
    boxes = np.array([[0.0, 0, 20, 10], [14, 0, 2, 2], [30, 30, 5, 5]])
    np.testing.assert_allclose(share_inside(boxes, regions), [0.75, 0.5, 0.0])


# ------------------------------------------------------------------------------------ ignored regions in eval
def _detrac_gt(root, ignored):
    """Two cars over 5 frames; car 2 sits inside the ignored region."""
    table = MotTable.from_rows([(f, k, x, 100, 60, 40, 1, -1, -1) for f in range(1, 6)
                                for k, x in ((1, 100.0), (2, 700.0))])
    table.classes = np.ones(len(table), dtype=np.int64)
    write_detrac_xml(root / "MVI_1.xml", "MVI_1", table, {1: "car"}, np.array(ignored, dtype=float))


def test_ignored_regions_neither_miss_nor_false_positive(tmp_path):
    _detrac_gt(tmp_path / "gt", [[680, 80, 120, 100]])
    perfect = [(f, 1, 100.0, 100, 60, 40, 0.9, 1, -1) for f in range(1, 6)]
    write_mot_txt(tmp_path / "a" / "MVI_1.txt", MotTable.from_rows(perfect))  # car 2 missed: inside the region
    fp = perfect + [(f, 9, 690.0, 90, 50, 50, 0.9, 1, -1) for f in range(1, 6)]  # a false track inside it
    write_mot_txt(tmp_path / "b" / "MVI_1.txt", MotTable.from_rows(fp))
    for results in ("a", "b"):
        report = evaluate_tracking(tmp_path / "gt", tmp_path / results)
        car = report["combined"]["car"]
        assert report["format"] == "detrac"
        assert car["CLR_FN"] == 0 and car["CLR_FP"] == 0 and car["MOTA"] == pytest.approx(1.0), results
        assert car["HOTA"] == pytest.approx(1.0) and car["GT_IDs"] == 1
    _detrac_gt(tmp_path / "plain", [])  # without the region: the miss and the false track count
    car = evaluate_tracking(tmp_path / "plain", tmp_path / "b")["combined"]["car"]
    assert car["CLR_FN"] == 5 and car["CLR_FP"] == 5


def test_a_box_half_inside_is_left_out_and_less_is_kept(tmp_path):
    _detrac_gt(tmp_path / "gt", [[730, 0, 200, 300]])  # car 2 (700..760) is exactly half inside
    write_mot_txt(tmp_path / "r" / "MVI_1.txt", MotTable.from_rows([(f, 1, 100.0, 100, 60, 40, 0.9, 1, -1)
                                                                    for f in range(1, 6)]))
    assert evaluate_tracking(tmp_path / "gt", tmp_path / "r")["combined"]["car"]["CLR_FN"] == 0
    _detrac_gt(tmp_path / "gt2", [[731, 0, 200, 300]])  # a little less than half: a miss again
    assert evaluate_tracking(tmp_path / "gt2", tmp_path / "r")["combined"]["car"]["CLR_FN"] == 5
