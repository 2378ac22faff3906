"""Tracking datasets in any format: detection, class names and maps, bad input (unknown classes, reused ids,
boxes outside the image), `vistra data convert` between MOTChallenge / KITTI / UA-DETRAC and to COCO,
`vistra eval track` on a KITTI folder, and training a tracker on KITTI-format data."""
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vistra.cli import main
from vistra.data.coco import build_coco
from vistra.data.errors import DataError
from vistra.tracking.datasets import class_names, detect_format, open_sequences, parse_class_map
from vistra.tracking.evaluate import evaluate_tracking
from vistra.tracking.kitti_io import KITTI_TYPES
from vistra.tracking.mot_io import MotTable, SeqInfo, read_gt, write_class_names, write_mot_txt, write_seqinfo

KITTI_IDS = dict(enumerate(KITTI_TYPES, start=1))
TINY = ["model.d_model=32", "model.n_heads=4", "model.n_points=2", "model.dec_layers=1",
        "model.dim_feedforward=64", "model.head_channels=16", "model.impl=fast"]


def _objects(t):
    """(track id, KITTI type, x0, y0, x1, y1) of frame t (0-based) in a 96 x 64 image."""
    return [(0, "Car", 4 + 3 * t, 30, 34 + 3 * t, 50), (1, "Pedestrian", 70 - 2 * t, 10, 80 - 2 * t, 40)]


def _kitti_row(t, track, kind, x0, y0, x1, y1):
    return f"{t} {track} {kind} 0 0 -10 {x0} {y0} {x1} {y1} -1 -1 -1 -1000 -1000 -1000 -10"


def make_kitti(root, seqs=("0000", "0001"), length=6, extra_rows=()):
    """A KITTI tracking root of 96 x 64 PNG frames: a car and a pedestrian moving, a DontCare region in frame 0."""
    for seq in seqs:
        rows = [_kitti_row(0, -1, "DontCare", 40, 0, 60, 8)]
        for t in range(length):
            image = Image.new("RGB", (96, 64), (90, 110, 90))
            draw = ImageDraw.Draw(image)
            for track, kind, x0, y0, x1, y1 in _objects(t):
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(200, 40, 40) if kind == "Car" else (40, 40, 200))
                rows.append(_kitti_row(t, track, kind, x0, y0, x1, y1))
            (root / "image_02" / seq).mkdir(parents=True, exist_ok=True)
            image.save(root / "image_02" / seq / f"{t:06d}.png")
        (root / "label_02").mkdir(parents=True, exist_ok=True)
        (root / "label_02" / f"{seq}.txt").write_text("\n".join([*rows, *extra_rows]) + "\n")
    return root


def make_mot(root, length=5):
    """A multi-class MOTChallenge folder (car 1, pedestrian 2) with frames and one ignore row."""
    seq = root / "cam-01"
    write_seqinfo(seq, SeqInfo("cam-01", length, 10, 96, 64, "img1", ".jpg"))
    rows = []
    for f in range(1, length + 1):
        Image.new("RGB", (96, 64), (f * 20, 50, 50)).save(seq / "img1" / f"{f:06d}.jpg") if (seq / "img1").is_dir() \
            else ((seq / "img1").mkdir(), Image.new("RGB", (96, 64)).save(seq / "img1" / f"{f:06d}.jpg"))
        rows += [(f, 3, 5.5 + f, 10.25, 20, 15, 1, 1, 1), (f, 7, 60.0 - f, 20.5, 8, 30, 1, 2, 0.5)]
    rows.append((2, -1, 70.0, 0.0, 20, 10, 0, -1, -1))  # an ignore region
    write_mot_txt(seq / "gt" / "gt.txt", MotTable.from_rows(rows), gt=True)
    write_class_names(root, {1: "car", 2: "pedestrian"})
    return root


# ------------------------------------------------------------------------------------------ the layer
def test_detect_and_open_kitti(tmp_path):
    root = make_kitti(tmp_path / "kitti" / "training")
    assert detect_format(tmp_path / "kitti") == detect_format(root) == "kitti"
    seqs = open_sequences(tmp_path / "kitti")
    assert [s.name for s in seqs] == ["0000", "0001"]
    seq = seqs[0]
    assert seq.classes == KITTI_IDS and seq.length == 6 and (seq.width, seq.height) == (96, 64)
    assert sorted(seq.frames) == list(range(1, 7)) and seq.frame_path(1).name == "000000.png"
    assert seq.gt.frames.min() == 1 and set(seq.gt.classes.tolist()) == {1, 4}
    np.testing.assert_allclose(seq.ignore_regions(1), [[40, 0, 20, 8]])
    assert len(seq.ignore_regions(2)) == 0
    with pytest.raises(DataError, match="is no tracking dataset folder"):
        detect_format(tmp_path)


def test_unknown_classes_are_listed_or_mapped(tmp_path):
    root = make_kitti(tmp_path / "k", seqs=("0000",), extra_rows=[_kitti_row(2, 5, "Bus", 1, 1, 30, 30)])
    with pytest.raises(DataError, match=r"0000.txt: line 14: unknown class 'Bus'; known: Car, Van, Truck, "
                                        r"Pedestrian, Person, Cyclist, Tram, Misc"):
        open_sequences(root)
    skipped = open_sequences(root, skip_bad=True)[0]
    assert len(skipped.gt) == 12 and len(skipped.skipped) == 1 and "line 14" in skipped.skipped[0]
    mapped = open_sequences(root, class_map="Bus=truck")[0]
    assert mapped.gt.classes[mapped.gt.ids == 5].tolist() == [3]  # Truck keeps its id
    new = open_sequences(root, class_map={"Bus": "Bus", "Van": "Car"})[0]
    assert new.classes == {1: "Car", 2: "Truck", 3: "Pedestrian", 4: "Person", 5: "Cyclist", 6: "Tram", 7: "Misc",
                           8: "Bus"}
    ignored = open_sequences(root, class_map="Bus=DontCare")[0]
    assert len(ignored.gt) == 12 and len(ignored.ignore_regions(3)) == 1
    dropped = open_sequences(root, class_map="Bus=drop")[0]
    assert len(dropped.gt) == 12 and "1 row(s) dropped by the class map" in dropped.notes[0]
    assert class_names("detrac", "Taxi=car") == {1: "car", 2: "bus", 3: "van", 4: "others"}


def test_track_ids_reused_across_classes(tmp_path):
    root = make_kitti(tmp_path / "k", seqs=("0000",), extra_rows=[_kitti_row(5, 0, "Cyclist", 1, 1, 30, 30)])
    text = (root / "label_02" / "0000.txt").read_text().replace("5 0 Car", "5 9 Car")
    (root / "label_02" / "0000.txt").write_text(text)
    with pytest.raises(DataError, match=r"line 14: track id 0 is a Car elsewhere and a Cyclist here"):
        open_sequences(root)
    seq = open_sequences(root, skip_bad=True)[0]
    assert len(seq.gt) == 12 and len(seq.skipped) == 1 and seq.gt.frames.max() == 6  # valid frames all kept


def test_boxes_outside_the_image_are_clipped_or_refused(tmp_path):
    root = make_kitti(tmp_path / "k", seqs=("0000",), extra_rows=[_kitti_row(1, 7, "Car", 80, 50, 120, 70)])
    seq = open_sequences(root)[0]
    np.testing.assert_allclose(seq.gt.boxes[seq.gt.ids == 7], [[80, 50, 16, 14]])
    assert "1 box(es) clipped to the 96x64 image" in seq.notes[0]
    outside = make_kitti(tmp_path / "o", seqs=("0000",), extra_rows=[_kitti_row(1, 7, "Car", 100, 70, 120, 90)])
    with pytest.raises(DataError, match=r"line 14: box .* lies entirely outside the 96x64 image"):
        open_sequences(outside)
    assert len(open_sequences(outside, skip_bad=True)[0].gt) == 12


def test_parse_class_map(tmp_path):
    assert parse_class_map("Taxi=car, Misc = ignore") == {"Taxi": "car", "Misc": "ignore"}
    path = tmp_path / "map.txt"
    path.write_text("# KITTI -> two classes\nVan=Car\nPerson=Pedestrian,Tram=drop\n")
    assert parse_class_map(str(path)) == {"Van": "Car", "Person": "Pedestrian", "Tram": "drop"}
    path.write_text("Van=Car\nPerson\n")
    with pytest.raises(DataError, match=r"map.txt: line 2: expected NAME=TARGET, got 'Person'"):
        parse_class_map(str(path))


# ------------------------------------------------------------------------------------------ convert
def test_convert_mot_to_kitti_and_back_keeps_boxes_ids_classes(tmp_path, capsys):
    mot = make_mot(tmp_path / "mot")
    assert main(["data", "convert", str(mot), str(tmp_path / "kitti"), "--to", "kitti"]) == 0
    assert "converted 1 sequence(s) (5 frames, 10 boxes, 1 ignore regions) from mot to kitti" in capsys.readouterr().out
    kitti = open_sequences(tmp_path / "kitti")[0]
    assert kitti.frame_path(1).name == "000000.jpg" and kitti.length == 5
    assert (tmp_path / "kitti" / "evaluate_tracking.seqmap.training").read_text() == "cam-01 empty 000000 000005\n"
    assert main(["data", "convert", str(tmp_path / "kitti"), str(tmp_path / "back"), "--to", "mot"]) == 0
    before, after = read_gt(mot / "cam-01"), read_gt(tmp_path / "back" / "cam-01")
    np.testing.assert_allclose(after.boxes, before.boxes, atol=1e-6)
    assert after.ids.tolist() == before.ids.tolist() and after.frames.tolist() == before.frames.tolist()
    names = open_sequences(tmp_path / "back")[0].classes
    assert [names.get(c, "-").lower() for c in after.classes] == [{1: "car", 2: "pedestrian"}.get(c, "-")
                                                                  for c in before.classes]
    assert (tmp_path / "back" / "cam-01" / "img1" / "000001.jpg").samefile(mot / "cam-01" / "img1" / "000001.jpg")
    assert main(["data", "convert", str(mot), str(tmp_path / "back"), "--to", "kitti"]) == 2  # not empty
    assert "exists and is not empty" in capsys.readouterr().err


def test_convert_kitti_to_coco_loads_as_a_detection_dataset(tmp_path):
    make_kitti(tmp_path / "k" / "train")
    make_kitti(tmp_path / "k" / "val", seqs=("0005",))
    assert main(["data", "convert", str(tmp_path / "k"), str(tmp_path / "coco"), "--to", "coco"]) == 0
    train = build_coco(tmp_path / "coco", "train", quiet=True)
    assert len(train) == 12 and train.categories == KITTI_IDS
    assert train.report["boxes"] == 24 + 2 * 2 and train.report["crowd"] == 2 * 2  # a DontCare per used class
    image, target = train[0]
    assert image.size == (96, 64) and sorted(target["labels"].tolist()) == [1, 4]
    data = json.loads((tmp_path / "coco" / "annotations" / "instances_val.json").read_text())
    assert {a["track_id"] for a in data["annotations"] if not a["iscrowd"]} == {0, 1}
    assert data["images"][0]["file_name"] == "0005_000001.png"


def test_convert_to_detrac_needs_vehicle_types(tmp_path, capsys):
    make_kitti(tmp_path / "k", seqs=("0000",))
    assert main(["data", "convert", str(tmp_path / "k"), str(tmp_path / "d"), "--to", "detrac"]) == 2
    assert "class(es) Pedestrian have no UA-DETRAC vehicle type (known: car, bus, van, others)" in \
        capsys.readouterr().err
    assert main(["data", "convert", str(tmp_path / "k"), str(tmp_path / "d"), "--to", "detrac", "--class-map",
                 "Pedestrian=drop"]) == 0
    out = capsys.readouterr().out
    assert "1 ignore region(s) of single frames left out" in out
    seq = open_sequences(tmp_path / "d")[0]
    assert seq.format == "detrac" and seq.classes[1] == "car" and len(seq.gt) == 6 and len(seq.frames) == 6


def test_convert_detrac_to_mot_and_back_keeps_ignored_regions(tmp_path, capsys):
    from vistra.tracking.detrac_io import write_detrac_xml

    root = tmp_path / "detrac"
    rows = [(f, k, 10.0 * k + f, 20, 30, 20, 1, -1, -1) for f in range(1, 5) for k in (1, 2)]
    table = MotTable.from_rows(rows)
    table.classes = np.array([1, 2] * 4)
    write_detrac_xml(root / "DETRAC-Train-Annotations-XML" / "MVI_1.xml", "MVI_1", table, {1: "car", 2: "van"},
                     np.array([[60.0, 0, 30, 10]]), {"camera_state": "stable", "sence_weather": "night"})
    for f in range(1, 5):
        (root / "Insight-MVT_Annotation_Train" / "MVI_1").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (96, 64)).save(root / "Insight-MVT_Annotation_Train" / "MVI_1" / f"img{f:05d}.jpg")
    assert detect_format(root) == "detrac"
    seq = open_sequences(root)[0]
    assert seq.classes == {1: "car", 2: "bus", 3: "van", 4: "others"} and seq.gt.classes.tolist() == [1, 3] * 4
    assert main(["data", "convert", str(root), str(tmp_path / "mot"), "--to", "mot"]) == 0
    gt = read_gt(tmp_path / "mot" / "MVI_1")
    assert int(np.sum(gt.ids == -1)) == 4 and int(np.sum(gt.scores == 0)) == 4  # the region in every frame
    assert main(["data", "convert", str(tmp_path / "mot"), str(tmp_path / "back"), "--to", "detrac"]) == 0
    assert "left out" not in capsys.readouterr().out
    back = open_sequences(tmp_path / "back")[0]
    np.testing.assert_allclose(back.ignored, [[60, 0, 30, 10]])
    np.testing.assert_allclose(back.gt.boxes, seq.gt.boxes)
    assert back.gt.classes.tolist() == seq.gt.classes.tolist() and len(back.frames) == 4


# ------------------------------------------------------------------------------------------ eval CLI
def test_eval_track_on_a_kitti_folder(tmp_path, capsys):
    root = make_kitti(tmp_path / "k")
    for seq in ("0000", "0001"):
        (tmp_path / "kitti_res").mkdir(exist_ok=True)
        rows = [line + " 0.9" for line in (root / "label_02" / f"{seq}.txt").read_text().splitlines()
                if "DontCare" not in line]
        (tmp_path / "kitti_res" / f"{seq}.txt").write_text("\n".join(rows) + "\n")
        gt = open_sequences(root)[0].gt
        write_mot_txt(tmp_path / "mot_res" / f"{seq}.txt", gt)
    assert main(["eval", "track", str(root), str(tmp_path / "kitti_res")]) == 0
    out = capsys.readouterr().out
    assert "Car" in out and "Pedestrian" in out and "class_averaged" in out
    saved = json.loads((tmp_path / "kitti_res" / "track_metrics.json").read_text())
    assert saved["format"] == "kitti" and saved["combined"]["class_averaged"]["HOTA"] == pytest.approx(1.0)
    assert main(["eval", "track", str(root), str(tmp_path / "mot_res"), "--format", "kitti", "--json",
                 "--classes", "Car,Cyclist"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == ["Car", "Cyclist"] and report["combined"]["Car"]["MOTA"] == pytest.approx(1.0)
    assert main(["eval", "track", str(root), str(tmp_path / "mot_res"), "--format", "detrac"]) == 2


def test_eval_mot_with_a_class_map_merges_classes(tmp_path):
    mot = make_mot(tmp_path / "mot")
    gt = read_gt(mot / "cam-01")
    write_mot_txt(tmp_path / "res" / "cam-01.txt", gt.select(gt.ids >= 0))
    assert evaluate_tracking(mot, tmp_path / "res")["classes"] == ["car", "pedestrian"]
    merged = evaluate_tracking(mot, tmp_path / "res", class_map="pedestrian=car")
    assert merged["classes"] == ["car"] and merged["combined"]["car"]["GT_IDs"] == 2
    assert merged["combined"]["car"]["MOTA"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no class bus to score; the classes are car, pedestrian"):
        evaluate_tracking(mot, tmp_path / "res", classes=["bus"])


# ------------------------------------------------------------------------------------------ training
def test_train_track_on_kitti_data(tmp_path, capsys):
    data = tmp_path / "data"
    make_kitti(data / "train", seqs=("0000",), length=5)
    make_kitti(data / "val", seqs=("0001",), length=3)
    run = tmp_path / "run"
    code = main(["train", "track", "--data", str(data), "--out", str(run), "--class-map", "Van=Car,Person=Pedestrian",
                 "--set", *TINY, "scales=[64]", "max_size=96", "eval_size=64", "eval_max_size=96", "epochs=1",
                 "batch_size=4", "lr_drop_epochs=[]", "progress=false"])
    assert code == 0
    assert "model saved to" in capsys.readouterr().out
    info = json.loads((run / "model.json").read_text())
    assert info["classes"] == ["Car", "Pedestrian"]  # the classes with boxes in train, after the class map
    assert info["class_ids"] == [1, 3] and info["recipe"]["class_map"] == "Van=Car,Person=Pedestrian"
    val = json.loads((run / "val" / "track_metrics.json").read_text())
    assert val["format"] == "kitti" and val["classes"] == ["Car", "Pedestrian"] and (run / "val" / "0001.txt").is_file()


def test_track_writes_kitti_results(tmp_path):
    from vistra.tracking.by_detection import track_to_folder

    root = make_kitti(tmp_path / "k", seqs=("0000",), length=4)

    def detector(image):  # the gt car and pedestrian of the frame, found by colour
        pixels = np.asarray(image)
        found = []
        for colour in ((200, 40, 40), (40, 40, 200)):
            ys, xs = np.nonzero(np.all(pixels == colour, axis=-1))
            found.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        return np.array(found, dtype=float), np.array([0.9, 0.8]), np.array([1, 4])

    track_to_folder(root / "image_02" / "0000", detector, tmp_path / "out", class_names=KITTI_IDS, render=False,
                    progress=False, results_format="kitti")
    rows = [line.split() for line in (tmp_path / "out" / "0000.txt").read_text().splitlines()]
    assert [r[0] for r in rows] == ["0", "0", "1", "1", "2", "2", "3", "3"] and {r[2] for r in rows} == {"Car",
                                                                                                         "Pedestrian"}
    assert all(len(r) == 18 for r in rows)
    report = evaluate_tracking(root, tmp_path / "out")
    assert report["combined"]["class_averaged"]["HOTA"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="KITTI results need KITTI type names"):
        track_to_folder(root / "image_02" / "0000", detector, tmp_path / "o2", class_names={1: "digit"},
                        render=False, progress=False, results_format="kitti")
