"""`vistra train track` (TransCenter-style tracker on frame pairs), then `vistra track` and `vistra eval track`
with the trained checkpoint; the pieces of the recipe on their own."""
import json

import numpy as np
import pytest
import torch

from vistra.cli import main
from vistra.data.digits_mot import make_digits_mot
from vistra.tracking import recipe
from vistra.tracking.by_model import CenterTracking, load_center_tracking
from vistra.trained import read_trained, task_of

TINY = ["model.d_model=32", "model.n_heads=4", "model.n_points=2", "model.dec_layers=1",
        "model.dim_feedforward=64", "model.head_channels=16", "model.impl=fast"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("dm") / "digits-mot"
    make_digits_mot(out, n_train=1, n_val=1, length=10, size=(96, 64), digit_size=(16, 24), max_objects=3, seed=2)
    return out


def test_collate_pairs_pads_both_frames_alike_and_returns_pixel_boxes():
    image = torch.zeros(3, 40, 50)
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]]), "labels": torch.tensor([0]),
              "track_ids": torch.tensor([4]), "size": torch.tensor([40, 50])}
    small = torch.zeros(3, 20, 30)
    small_t = {**target, "size": torch.tensor([20, 30])}
    images, masks, prev, prev_masks, targets = recipe.collate_pairs([(image, target, image, target),
                                                                     (small, small_t, small, small_t)])
    assert images.shape == prev.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64)
    assert masks[1, :20, :30].logical_not().all() and masks[1, 20:].all()
    torch.testing.assert_close(targets[0]["boxes"], torch.tensor([[20.0, 12.0, 30.0, 28.0]]))
    torch.testing.assert_close(targets[1]["prev_boxes"], torch.tensor([[12.0, 6.0, 18.0, 14.0]]))
    assert targets[0]["prev_track_ids"].tolist() == [4]


def test_settings_are_checked():
    r, train = recipe.resolve_config({"class_agnostic": True, "model.d_model": 64, "lr": 1e-3})
    assert r.class_agnostic and r.model_kwargs == {"d_model": 64} and train == {"lr": 1e-3}
    with pytest.raises(ValueError, match="unknown tracking setting 'bogus'"):
        recipe.resolve_config({"bogus": 1})


def test_heatmap_classes_from_classes_txt_or_one_class(digits):
    names = recipe.dataset_classes(digits, recipe.TrackRecipe())
    assert names == {d: str(d) for d in range(10)}
    assert recipe.heatmap_classes(names, recipe.TrackRecipe()) == ([str(d) for d in range(10)], list(range(10)))
    assert recipe.heatmap_classes(names, recipe.TrackRecipe(class_agnostic=True)) == (["object"], None)
    assert recipe.heatmap_classes(None, recipe.TrackRecipe()) == (["pedestrian"], None)


def test_train_track_then_track_and_eval(digits, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "track", "--data", str(digits), "--out", str(run), "--set", *TINY, "class_agnostic=true",
                 "scales=[64]", "max_size=96", "eval_size=64", "eval_max_size=96", "epochs=2", "batch_size=4",
                 "lr=1e-3", "lr_drop_epochs=[]", "progress=false"])
    assert code == 0
    line = capsys.readouterr().out
    assert "HOTA" in line and "model saved to" in line
    losses = [json.loads(x)["train_loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert task_of(run) == "track"
    state, info, _ = read_trained(run)
    assert info["model_name"] == "transcenter_pvt_v2_b0" and info["classes"] == ["object"]
    scores = json.loads((run / "val" / "track_metrics.json").read_text())
    assert {"HOTA", "MOTA", "IDF1"} <= set(scores["combined"]["all"] if "all" in scores["combined"]
                                           else next(iter(scores["combined"].values())))

    tracker, _ = load_center_tracking(run, "cpu", score_threshold=0.0)
    assert isinstance(tracker, CenterTracking)
    from PIL import Image

    frame = Image.open(next((digits / "val").glob("*/img1/000001.jpg")))
    boxes, scores_, labels, prev = tracker(frame)
    assert boxes.shape[1] == 4 and prev.shape == (len(boxes), 2) and np.all(np.diff(scores_) <= 0)

    seq = next((digits / "val").glob("digits-*"))
    out = tmp_path / "tracked"
    assert main(["track", str(seq), "--checkpoint", str(run), "--out", str(out), "--no-render"]) == 0
    assert (out / f"{seq.name}.txt").is_file()
    assert main(["eval", "track", str(digits / "val"), str(out), "--class-agnostic"]) == 0
    assert "HOTA" in capsys.readouterr().out


def test_a_detector_checkpoint_is_not_a_tracker(tmp_path):
    from vistra.checkpoints import CheckpointError
    from vistra.trained import save_trained

    save_trained({"w": torch.zeros(1)}, tmp_path, {"task": "detect", "model_name": "detr"})
    with pytest.raises(CheckpointError, match="not a tracking model"):
        load_center_tracking(tmp_path)


def test_gt_classes_outside_the_tracked_ones_are_named_when_the_data_is_built(digits):
    from vistra.data.errors import DataError
    from vistra.data.frame_pairs import FramePairDataset

    sequences = recipe.sequences_of(digits, "train")
    with pytest.raises(DataError, match=r"class id\(s\) \[.*\], which are not among the tracked classes \[3, 5\]"):
        FramePairDataset(sequences, label_map={3: 0, 5: 1})


def test_seqinfo_imdir_leaving_the_sequence_needs_allow_outside_root(tmp_path, capsys):
    """A seqinfo.ini whose imDir climbs out of its sequence folder stops `train track` with the file and the flag
    named; --allow-outside-root trains on it."""
    from vistra.tracking.mot_io import find_sequences, read_seqinfo, write_seqinfo

    data = tmp_path / "digits-mot"
    make_digits_mot(data, n_train=1, n_val=0, length=6, size=(64, 64), digit_size=(16, 24), max_objects=2, seed=3)
    (seq,) = find_sequences(data / "train")
    info = read_seqinfo(seq)
    write_seqinfo(seq, info.__class__(**{**vars(info), "im_dir": f"../{seq.name}/{info.im_dir}"}))
    common = ["--set", *TINY, "class_agnostic=true", "scales=[64]", "max_size=64", "val_split=null", "epochs=1",
              "batch_size=2", "progress=false"]
    assert main(["train", "track", "--data", str(data), "--out", str(tmp_path / "refused"), *common]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vistra: error: {seq / 'seqinfo.ini'}: imDir") and "--allow-outside-root" in err
    assert main(["train", "track", "--data", str(data), "--out", str(tmp_path / "run"), "--allow-outside-root",
                 *common]) == 0
    assert read_trained(tmp_path / "run")[1]["recipe"]["allow_outside_root"] is True


def test_the_same_seed_trains_the_same_tracker(digits, tmp_path):
    """Initial weights come from the run's seed: two runs give bitwise-equal models, another seed another one."""
    settings = {"model.d_model": 32, "model.n_heads": 4, "model.n_points": 2, "model.dec_layers": 1,
                "model.dim_feedforward": 64, "model.head_channels": 16, "class_agnostic": True, "scales": [64],
                "max_size": 96, "val_split": None, "epochs": 1, "batch_size": 4, "progress": False}
    runs = [recipe.train_track("transcenter_pvt_v2_b0", digits, tmp_path / name, {**settings, "seed": seed})
            for name, seed in (("a", 0), ("b", 0), ("c", 1))]
    a, b, c = (read_trained(tmp_path / name)[0] for name in "abc")
    assert runs[0]["history"][-1]["train_loss"] == runs[1]["history"][-1]["train_loss"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
