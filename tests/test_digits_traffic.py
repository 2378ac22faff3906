"""`vistra data make digits-traffic`: multi-class sequences in KITTI-tracking layout with DontCare regions, read
back by the format layer, and a multi-class tracker trained and scored per class on them."""
import json

import numpy as np
import pytest

from vistra.cli import main
from vistra.data.digits_traffic import TYPE_OF_DIGIT, make_digits_traffic
from vistra.data.errors import DataError
from vistra.tracking.datasets import detect_format, open_sequences

TINY = ["model.d_model=32", "model.n_heads=4", "model.n_points=2", "model.dec_layers=1",
        "model.dim_feedforward=64", "model.head_channels=16", "model.impl=fast"]


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    out = tmp_path_factory.mktemp("dt") / "digits-traffic"
    summary = make_digits_traffic(out, n_train=2, n_val=1, length=8, size=(96, 72), digit_size=(16, 22),
                                  max_objects=4, dontcare=1.0, seed=1)
    return out, summary


def test_writes_kitti_tracking_roots_the_format_layer_reads(traffic):
    out, summary = traffic
    assert summary["sequences"] == {"train": ["0000", "0001"], "val": ["0000"]}
    assert summary["dontcare"] == {"train": 2, "val": 1}
    for split in ("train", "val"):
        assert detect_format(out / split) == "kitti"
        seqs = open_sequences(out / split)
        assert [s.name for s in seqs] == summary["sequences"][split]
        assert sum(len(s.gt) for s in seqs) == summary["boxes"][split] > 0
        for seq in seqs:
            assert seq.length == 8 and (seq.width, seq.height) == (96, 72) and len(seq.frames) == 8
            used = {seq.classes[int(c)] for c in np.unique(seq.gt.classes)}
            assert used <= set(TYPE_OF_DIGIT.values())
            for frame in range(1, 9):  # one DontCare strip along a border in every frame
                (left, top, w, h), = seq.ignore_regions(frame)
                assert left == 0 or top == 0 or left + w == 96 or top + h == 72
            assert not seq.skipped and not seq.notes
    assert (out / "README.txt").read_text().startswith("vistra digits-traffic dataset")


def test_frame_pairs_carry_dontcare_regions_through_the_augmentation(traffic):
    """Training pairs hold each frame's DontCare strip as "ignore_boxes", moved by the same flip and resize as
    the image; collate_pairs hands them to the loss targets."""
    import torch

    from vistra.data.frame_pairs import FramePairDataset, build_pair_transform
    from vistra.tracking.recipe import collate_pairs

    out, _ = traffic
    (seq,) = open_sequences(out / "val")
    (left, top, w, h), = seq.ignore_regions(3)
    plain = FramePairDataset([seq], build_pair_transform(train=False, eval_size=72, max_size=None), max_gap=1)
    _, prev_target, _, target = plain[1]  # frames 2 and 3
    assert target["ignore_boxes"].tolist() == [[left, top, left + w, top + h]]
    assert prev_target["ignore_boxes"].tolist() == [[left, top, left + w, top + h]]
    flipped = FramePairDataset([seq], build_pair_transform(scales=[144], max_size=None, hflip=1.0), max_gap=1)
    sample = flipped[1]
    (box,) = sample[3]["ignore_boxes"].tolist()  # mirrored, then doubled (72 -> 144 rows)
    assert box == pytest.approx([2 * (96 - left - w), 2 * top, 2 * (96 - left), 2 * (top + h)])
    batch = collate_pairs([sample, plain[1]])
    assert torch.equal(batch[4][0]["ignore_boxes"], sample[3]["ignore_boxes"])


def test_same_seed_same_data_and_foreign_folders_are_refused(traffic, tmp_path):
    out, _ = traffic
    again = make_digits_traffic(tmp_path / "again", n_train=2, n_val=1, length=8, size=(96, 72),
                                digit_size=(16, 22), max_objects=4, dontcare=1.0, seed=1)
    for name in ("train/label_02/0001.txt", "val/label_02/0000.txt"):
        assert (tmp_path / "again" / name).read_text() == (out / name).read_text()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="was not made by make_digits_traffic"):
        make_digits_traffic(tmp_path / "mine", n_train=1, n_val=0, length=4, size=(96, 72), digit_size=(16, 22))
    assert again["boxes"]["val"] > 0


def test_multi_class_tracker_trains_and_is_scored_per_class(traffic, tmp_path, capsys):
    out, _ = traffic
    run = tmp_path / "run"
    code = main(["train", "track", "--data", str(out), "--out", str(run), "--set", *TINY, "scales=[72]",
                 "max_size=96", "eval_size=72", "eval_max_size=96", "epochs=1", "batch_size=4", "progress=false"])
    assert code == 0
    info = json.loads((run / "model.json").read_text())
    present = sorted({TYPE_OF_DIGIT[d] for d in TYPE_OF_DIGIT})
    assert set(info["classes"]) <= set(present) and info["class_ids"] == sorted(info["class_ids"])
    report = json.loads((run / "val" / "track_metrics.json").read_text())
    assert report["format"] == "kitti" and report["classes"] == info["classes"]
    assert "class_averaged" in report["combined"] or len(info["classes"]) == 1
    assert "trained transcenter_pvt_v2_b0" in capsys.readouterr().out


def test_cli_make_digits_traffic(tmp_path, capsys):
    code = main(["data", "make", "digits-traffic", str(tmp_path / "dt"), "--train", "1", "--val", "1", "--length",
                 "3", "--size", "96", "72", "--digit-size", "16", "22", "--max-objects", "2"])
    assert code == 0
    said = capsys.readouterr().out
    assert "(KITTI tracking layout): 1 train and 1 val sequences of 3 frames" in said
    assert "--classes Car,Pedestrian,Cyclist" in said
