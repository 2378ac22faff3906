"""Segmentation runs end to end: settings, loss, a short training on digits-seg that learns, the saved model,
eval / predict from it, and the `vistra` command lines."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from vistra.checkpoints.errors import CheckpointError
from vistra.cli import main
from vistra.data.digits_seg import make_digits_seg
from vistra.data.errors import DataError
from vistra.data.seg_dataset import SegmentationDataset, write_mask
from vistra.segmentation.config import SegRecipe, flatten, resolve_config
from vistra.segmentation.evaluate import eval_segment, evaluate, load_segmenter
from vistra.segmentation.predict import predict_segment
from vistra.segmentation.recipe import build_datasets, build_model, segmentation_loss, train_segment
from vistra.segmentation.render import overlay
from vistra.trained import save_trained, task_of

# Memorising 16 canvases of 48x48 (5 copies of each per epoch, 8 epochs of 5 steps): no augmentation, eval on the
# same images.
FIT = {"crop_size": 48, "scale": [48, 48], "ratio_range": [1.0, 1.0], "cat_max_ratio": 1.0, "hflip": 0.0,
       "photometric": False, "eval_scale": None, "head_lr_scale": 1.0, "lr": 3e-3, "weight_decay": 0.0,
       "batch_size": 16, "epochs": 8, "warmup_epochs": 0.5, "eval_every": 8, "progress": False}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a small shared CPU, oversubscribed threads make each step many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    """digits-seg with 16 canvases as the val split and 5 copies of each as the train split."""
    root = tmp_path_factory.mktemp("digits_seg")
    make_digits_seg(root, seed=1, n_train=16, n_val=1, min_size=48, max_size=48, max_digits=2, digit_sizes=(24, 36))
    shutil.rmtree(root / "val")
    shutil.copytree(root / "train", root / "val")
    for kind in ("images", "masks"):
        for path in sorted((root / "val" / kind).iterdir()):
            for copy in range(1, 5):
                shutil.copy(path, root / "train" / kind / f"{path.stem}_{copy}.png")
    return root


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("seg_run")
    recipe, _ = resolve_config(FIT)
    torch.manual_seed(0)  # train_segment seeds with the same seed: these are its initial weights
    untrained, _ = build_model("semfpn_pvt_v2_digits", recipe, None)
    val = build_datasets(digits_root, recipe, 11, ["val"])["val"]
    before = evaluate(untrained.eval(), val, 11, recipe)
    return out, before, train_segment("semfpn_pvt_v2_digits", digits_root, out, FIT)


# -------------------------------------------------------------------------------------------- settings
def test_settings_are_typed_split_and_checked():
    recipe, cfg = resolve_config({"crop_size": 64, "scale": [128, 64], "train.lr": "1e-3", "epochs": 3,
                                  "model.fpn_channels": 16, "eval_mode": "slide"}, out_dir="somewhere")
    assert recipe.crop_size == 64 and recipe.scale == (128, 64) and recipe.model_kwargs == {"fpn_channels": 16}
    assert (cfg.lr, cfg.epochs, cfg.out_dir, cfg.best_metric) == (1e-3, 3, "somewhere", "mIoU")
    assert recipe.window() == (64, 42)
    assert flatten({"train": {"lr": 1}, "model_kwargs": {"a": 1}}) == {"train.lr": 1, "model_kwargs": {"a": 1}}
    with pytest.raises(ValueError, match="unknown segmentation setting 'crop'"):
        resolve_config({"crop": 3})
    with pytest.raises(ValueError, match="crop_size='big' must be int"):
        resolve_config({"crop_size": "big"})
    with pytest.raises(ValueError, match="eval_mode='tiles' must be 'whole' or 'slide'"):
        SegRecipe(eval_mode="tiles")
    with pytest.raises(ValueError, match="unknown segmentation setting 'lr'"):
        resolve_config({"lr": 1.0}, train=False)  # eval and predict take recipe keys only


def test_loss_averages_over_labelled_pixels_only():
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    masks = torch.randint(0, 3, (2, 4, 5))
    masks[0, 0] = 255
    keep = masks != 255
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep])
    torch.testing.assert_close(segmentation_loss(logits, masks), expected)
    empty = segmentation_loss(logits, torch.full((2, 4, 5), 255))
    empty.backward()
    assert empty.item() == 0 and logits.grad is not None


# ---------------------------------------------------------------------------------------------- training
def test_training_on_digits_seg_learns(trained):
    _, before, result = trained
    losses = [r["train_loss"] for r in result["history"]]
    assert losses[-1] < 0.4 * losses[0], losses
    # Untrained: about 0.03 mIoU; 40 steps reach about 0.25 (background everywhere would score about 0.08).
    assert result["metrics"]["mIoU"] > before["mIoU"] + 0.15, (before["mIoU"], result["metrics"])
    assert result["metrics"]["pixel_acc"] > before["pixel_acc"] + 0.3


def test_the_run_saves_a_described_model(trained):
    out, _, result = trained
    assert result["weights"] == str(out / "model.safetensors") and task_of(out) == "segment"
    info = json.loads((out / "model.json").read_text())
    assert info["task"] == "segment" and info["model_name"] == "semfpn_pvt_v2_digits"
    assert info["classes"][:2] == ["background", "0"] and info["model_kwargs"]["num_classes"] == 11
    assert info["recipe"]["crop_size"] == 48 and (out / "run_config.yaml").is_file()
    model, loaded = load_segmenter(out)
    assert loaded["model_name"] == "semfpn_pvt_v2_digits" and not model.training


def test_eval_segment_reproduces_the_training_eval(trained, digits_root, tmp_path):
    out, _, result = trained
    metrics = eval_segment(out / "model.safetensors", digits_root, settings={}, device="cpu", out=tmp_path,
                           progress=False)
    assert metrics["mIoU"] == pytest.approx(result["metrics"]["mIoU"], abs=1e-6)
    assert set(metrics["per_class_iou"]) == {"background", *map(str, range(10))}
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["mIoU"] == metrics["mIoU"]
    covering = eval_segment(out, digits_root, settings={"eval_mode": "slide", "eval_crop": 48, "eval_stride": 32},
                            device="cpu", out=tmp_path, progress=False)  # one window per 48x48 image
    assert covering["eval_mode"] == "slide" and covering["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)
    windows = eval_segment(out, digits_root, settings={"eval_mode": "slide", "eval_crop": 32, "eval_stride": 16},
                           device="cpu", out=tmp_path, progress=False)  # 4 windows per image, partial digits
    assert 0 < windows["mIoU"] < 1 and windows["mIoU"] != metrics["mIoU"]


def test_predict_writes_masks_and_overlays(trained, digits_root, tmp_path):
    out, _, _ = trained
    folder = digits_root / "val" / "images"
    records = predict_segment([folder], out, tmp_path / "pred", device="cpu")
    assert len(records) == 16
    first = records[0]
    mask = Image.open(first["mask"])
    assert mask.mode == "P" and mask.size == Image.open(first["image"]).size
    truth = SegmentationDataset(digits_root, "val")[0][1]
    assert (np.asarray(mask) == truth).mean() > 0.8  # it predicts what it learned
    assert Image.open(first["overlay"]).size == mask.size
    assert abs(sum(first["classes"].values()) - 1) < 1e-6
    saved = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert [r["image"] for r in saved] == [r["image"] for r in records]
    with pytest.raises(DataError, match=r"nope\.png: no such image file"):
        predict_segment([tmp_path / "nope.png"], out, tmp_path / "pred", device="cpu")
    with pytest.raises(ValueError, match="alpha"):
        predict_segment([folder], out, tmp_path / "pred", alpha=2.0)


def test_overlay_blends_class_colours_and_keeps_the_background():
    image = Image.new("RGB", (2, 1), (100, 100, 100))
    mask = np.array([[0, 1]], np.uint8)
    palette = [0, 0, 0, 200, 0, 0]
    blended = np.asarray(overlay(image, mask, palette, alpha=0.5, background=0))
    assert blended[0, 0].tolist() == [100, 100, 100] and blended[0, 1].tolist() == [150, 50, 50]


def test_load_segmenter_refuses_other_tasks(tmp_path):
    save_trained({"w": torch.zeros(1)}, tmp_path, {"task": "classify", "model_name": "vit_digits"})
    with pytest.raises(CheckpointError, match="not a segmentation model.*it is a classify model"):
        load_segmenter(tmp_path)


# ------------------------------------------------------------------------------------------ command line
def test_cli_make_train_eval_predict(tmp_path, capsys):
    data, run = tmp_path / "data", tmp_path / "run"
    assert main(["data", "make", "digits-seg", str(data), "--n-train", "8", "--n-val", "2"]) == 0
    assert "8 train and 2 val" in capsys.readouterr().out
    config = tmp_path / "seg.yaml"
    config.write_text("crop_size: 48\nscale: [48, 48]\ntrain:\n  epochs: 1\n  batch_size: 8\n  progress: false\n")
    assert main(["train", "segment", "--model", "semfpn_pvt_v2_digits", "--data", str(data), "--config",
                 str(config), "--set", "eval_scale=null", "photometric=false", "--out", str(run)]) == 0
    assert "trained semfpn_pvt_v2_digits for 1 epochs on 8 images: val mIoU" in capsys.readouterr().out
    assert main(["eval", "segment", "--checkpoint", str(run), "--data", str(data), "--mode", "slide",
                 "--set", "eval_crop=32", "--device", "cpu"]) == 0
    assert "(val, 2 images, slide): mIoU" in capsys.readouterr().out
    assert json.loads((run / "eval_metrics.json").read_text())["eval_mode"] == "slide"
    image = data / "val" / "images" / "00000.png"
    assert main(["predict", str(image), "--checkpoint", str(run), "--out", str(tmp_path / "pred"),
                 "--seg-alpha", "0.3"]) == 0
    assert (tmp_path / "pred" / "00000_mask.png").is_file() and (tmp_path / "pred" / "00000_overlay.png").is_file()


def test_cli_reports_bad_masks_in_one_line(tmp_path, capsys):
    root = tmp_path / "bad"
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "masks").mkdir(parents=True)
    Image.new("RGB", (16, 12)).save(root / "train" / "images" / "a.png")
    write_mask(root / "train" / "masks" / "a.png", np.zeros((10, 16), np.uint8))
    code = main(["train", "segment", "--model", "semfpn_pvt_v2_digits", "--data", str(root), "--set",
                 "val_split=null", "crop_size=16", "epochs=1", "batch_size=1", "progress=false",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("vistra: error: ") and err.count("\n") == 1
    assert "masks/a.png: mask size 16x10 differs from the size 16x12" in err
    code = main(["train", "segment", "--model", "semfpn_pvt_v2_digits", "--data", str(root), "--set", "crop=3"])
    assert code == 2 and "unknown segmentation setting 'crop'" in capsys.readouterr().err
    code = main(["train", "segment", "--model", "pvt_v2_b0", "--data", str(root), "--set", "val_split=null"])
    assert code == 2 and "is not a segmentation model" in capsys.readouterr().err
