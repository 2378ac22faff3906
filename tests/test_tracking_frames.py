"""Frame sources (folders, sequences, videos, bad frames), frame pairs with one augmentation, tracking by detection
(a callable detector and a trained vistra detector checkpoint), `vistra track`."""
import numpy as np
import pytest
import torch
from PIL import Image

from vistra.cli import main
from vistra.data.digits_mot import make_digits_mot
from vistra.data.errors import DataError
from vistra.data.frame_pairs import FramePairDataset, build_pair_transform
from vistra.tracking.by_detection import detector_from_checkpoint, track_to_folder
from vistra.tracking.evaluate import evaluate_tracking
from vistra.tracking.frames import open_frames
from vistra.tracking.mot_io import find_sequences, read_gt, read_mot_txt


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("dm") / "digits-mot"
    make_digits_mot(out, n_train=1, n_val=1, length=30, size=(128, 96), digit_size=(16, 28), max_objects=5, seed=1)
    return out


def _frames(folder, names, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", size, (10 * i, 0, 0)).save(folder / name)


def test_folder_gaps_and_unreadable_frames_are_counted(tmp_path):
    _frames(tmp_path / "f", ["000001.png", "000002.png", "000005.png"])
    (tmp_path / "f" / "000003.png").write_bytes(b"not an image")
    source = open_frames(tmp_path / "f")
    got = [(f.index, f.name) for f in source]
    assert got == [(1, "000001.png"), (2, "000002.png"), (5, "000005.png")]
    assert source.gaps == [(2, 5)] and len(source.skipped) == 1 and "000003.png" in source.skipped[0]
    with pytest.raises(DataError, match="000003.png: cannot read image"):
        list(open_frames(tmp_path / "f", skip_bad=False))
    _frames(tmp_path / "named", ["b.png", "a.png"])  # no numbers: sorted order
    assert [(f.index, f.name) for f in open_frames(tmp_path / "named")] == [(1, "a.png"), (2, "b.png")]
    with pytest.raises(DataError, match="holds no image files"):
        open_frames(tmp_path / "named" / "..")
    with pytest.raises(DataError, match="not a video file"):
        open_frames(tmp_path / "f" / "000001.png")


def test_mot_sequence_folder(digits):
    seq = find_sequences(digits / "val")[0]
    source = open_frames(seq)
    frames = list(source)
    assert source.name == seq.name and source.frame_rate == 10 and len(frames) == 30 and frames[-1].index == 30


def test_video_reading_and_a_video_that_ends_early(tmp_path):
    import cv2  # opencv: the optional video reader
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (48, 32))
    for i in range(10):
        writer.write(np.full((32, 48, 3), 20 * i, np.uint8))
    writer.release()
    source = open_frames(path)
    frames = list(source)
    assert len(frames) == 10 and frames[0].image.size == (48, 32) and source.problems == []
    assert abs(np.asarray(frames[3].image, float).mean() - 60) < 3
    data = bytearray(path.read_bytes())
    start, stop = len(data) * 60 // 100, len(data) * 85 // 100
    data[start:stop] = bytes(stop - start)  # frames lost mid-file; the header still announces 10
    cut = tmp_path / "cut.avi"
    cut.write_bytes(bytes(data))
    short = open_frames(cut)
    kept = list(short)
    assert 0 < len(kept) < 10 and "ended after" in short.problems[0]


def test_frame_pairs_share_one_augmentation(digits, monkeypatch):
    seq = find_sequences(digits / "train")[0]
    pairs = FramePairDataset([seq], build_pair_transform(scales=[64, 80], max_size=160, crop_resize=[96],
                                                          crop_size=(48, 80), hflip=0.5), max_gap=1)
    assert len(pairs) == 29
    # a pair of the SAME frame: any difference between the two outputs would come from the augmentation
    read_frame = pairs._frame
    monkeypatch.setattr(pairs, "_frame", lambda k, t: read_frame(k, 10))
    for seed in range(6):
        torch.manual_seed(seed)
        prev_image, prev_target, image, target = pairs[0]
        assert torch.equal(prev_image, image)
        assert torch.equal(prev_target["boxes"], target["boxes"])
        assert torch.equal(prev_target["track_ids"], target["track_ids"])
        assert len(target["labels"]) == len(target["boxes"]) == len(target["visibility"])
    torch.manual_seed(0)
    prev_image, prev_target, image, target = FramePairDataset([seq], max_gap=3)[5]
    assert prev_image.shape == image.shape and prev_target["image_id"] < target["image_id"]
    shared = set(prev_target["track_ids"].tolist()) & set(target["track_ids"].tolist())
    assert shared  # the same objects, with the same ids, in both frames


class _GtDetector:
    """A detector that returns the ground truth of each frame (by order of calls), to test the tracking loop."""

    def __init__(self, gt, fail_at=None):
        self.gt, self.fail_at, self.frame = gt, fail_at, 0

    def __call__(self, image):
        self.frame += 1
        if self.frame == self.fail_at:
            raise RuntimeError("detector failed")
        rows = self.gt.at_frame(self.frame)
        return rows.xyxy(), np.full(len(rows), 0.9), rows.classes


def test_tracking_by_detection_end_to_end(digits, tmp_path):
    seq = find_sequences(digits / "val")[0]
    gt = read_gt(seq)
    summary = track_to_folder(seq, _GtDetector(gt), tmp_path / "out", class_names={d: str(d) for d in range(10)},
                              progress=False)
    assert summary["frames"] == 30 and summary["fps"] > 0
    assert len(list((tmp_path / "out" / "frames" / seq.name).glob("*.png"))) == 30
    report = evaluate_tracking(digits / "val", tmp_path / "out")
    assert report["combined"]["all"]["MOTA"] > 0.9 and report["combined"]["all"]["IDF1"] > 0.8
    with pytest.raises(RuntimeError, match="detector failed"):
        track_to_folder(seq, _GtDetector(gt, fail_at=6), tmp_path / "partial", progress=False)
    kept = read_mot_txt(tmp_path / "partial" / f"{seq.name}.txt")
    assert set(kept.frames.tolist()) == set(gt.frames[gt.frames <= 5].tolist())  # frames 1..5 are not lost


def test_detector_checkpoint_and_cli_track(tmp_path, capsys):
    from vistra.detection.recipe import register_detectors
    from vistra.registry import create_model
    from vistra.trained import save_trained

    register_detectors()
    kwargs = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1,
              "dim_feedforward": 64, "num_queries": 8, "num_classes": 3}
    model = create_model("detr", **kwargs)
    with torch.no_grad():  # a confident "class 1" everywhere, so there are boxes to track
        model.class_embed.bias.zero_()
        model.class_embed.bias[1] = 20.0
    save_trained(model, tmp_path / "det", {"task": "detect", "model_name": "detr", "model_kwargs": kwargs,
                                           "classes": {"1": "thing"}, "recipe": {"eval_size": 64,
                                                                                 "eval_max_size": 96}})
    detect, info = detector_from_checkpoint(tmp_path / "det", device="cpu")
    boxes, scores, labels = detect(Image.new("RGB", (80, 60)))
    assert boxes.shape == (8, 4) and (labels == 1).all() and (scores > 0.5).all() and info["classes"] == {1: "thing"}
    assert (boxes[:, 2] <= 80.01).all() and (boxes[:, 3] <= 60.01).all()  # in the frame's own pixels
    _frames(tmp_path / "frames", [f"{i:06d}.png" for i in range(1, 4)], size=(80, 60))
    assert main(["track", str(tmp_path / "frames"), "--checkpoint", str(tmp_path / "det"), "--out",
                 str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert "frames/s" in capsys.readouterr().out
    results = read_mot_txt(tmp_path / "run" / "frames.txt")
    assert set(results.frames.tolist()) == {1, 2, 3} and (results.classes == 1).all()
    assert len(list((tmp_path / "run" / "frames" / "frames").glob("*.png"))) == 3
    save_trained(model, tmp_path / "not_det", {"task": "classify", "model_name": "detr"})
    assert main(["track", str(tmp_path / "frames"), "--checkpoint", str(tmp_path / "not_det")]) == 2
    assert "holds a classify model" in capsys.readouterr().err
