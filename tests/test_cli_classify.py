"""The `vistra` command for classification, run in-process on a tiny digits subset."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from vistra.classification.config import ClassifyConfig, resolve_classify_config
from vistra.classification.evaluate import topk_correct
from vistra.classification.model_file import ClassifierInfo, load_classifier, save_classifier
from vistra.classification.presets import DIGITS_RECIPE
from vistra.checkpoints import CheckpointError
from vistra.classification.rollout import attention_rollout
from vistra.cli import main
from vistra.config import resolve_config, save_config
from vistra.data.image_io import read_image
from vistra.layers import packed_weights_supported
from vistra.trained import save_trained

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["0", "1", "2"]
TINY = ["model.kwargs={embed_dim: 32, depth: 1, num_heads: 2}", "train.batch_size=8", "train.progress=false",
        "train.warmup_epochs=0", "aug.hflip=0", "data.crop_pct=1"]
TINY_PVT = ["model.img_size=32", "model.kwargs={embed_dims: [8, 16, 16, 32], num_heads: [1, 1, 1, 1], "
            "depths: [1, 1, 1, 1], mlp_ratios: [2, 2, 2, 2]}", *TINY[1:]]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train fastest on one thread, and do not slow down on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(data, out, *extra, epochs=2, model="vit_digits", tiny=TINY):
    return main(["train", "classify", "--model", model, "--data", str(data), "--out", str(out),
                 "--set", *tiny, f"train.epochs={epochs}", *extra])


def _error_line(capsys):
    """The one `vistra: error:` line that ends stderr (progress bars may come before it); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("vistra")]
    assert len(lines) == 1 and err.rstrip().endswith(lines[0]), err
    assert lines[0].startswith("vistra: error: ")
    return lines[0]


def _first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """3 classes, 16 train and 6 val images each, from `vistra data make digits-cls`."""
    full = tmp_path_factory.mktemp("full") / "digits"
    assert main(["data", "make", "digits-cls", str(full)]) == 0
    assert len(list((full / "train").rglob("*.png"))) + len(list((full / "val").rglob("*.png"))) == 1797
    small = tmp_path_factory.mktemp("digits")
    for split, count in (("train", 16), ("val", 6)):
        for name in CLASSES:
            (small / split / name).mkdir(parents=True)
            for f in sorted((full / split / name).glob("*.png"))[:count]:
                shutil.copy(f, small / split / name / f.name)
    return small


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    assert _train(digits, out) == 0
    return out


@pytest.fixture(scope="module")
def odd_images(digits, tmp_path_factory):
    """Bad files (truncated JPEG, corrupt PNG, text named .jpg) and unusual but valid ones (L, RGBA, 16-bit)."""
    folder = tmp_path_factory.mktemp("odd")
    digit = read_image(_first(digits / "val" / "1"))  # RGB 32x32
    digit.save(folder / "whole.jpg", quality=95)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (folder / "notes.jpg").write_text("this is a text file, not an image\n")
    gray = digit.convert("L")
    gray.save(folder / "gray.png")
    rgba = digit.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    Image.fromarray((np.asarray(gray).astype(np.uint16) * 257)).save(folder / "deep.png")  # 16-bit
    with Image.open(folder / "deep.png") as check:
        assert check.mode.startswith("I")
    return folder


BAD = ("truncated.jpg", "corrupt.png", "notes.jpg")
ODD = ("gray.png", "rgba.png", "deep.png")


# ------------------------------------------------------------------------------------------- train
def test_train_writes_run_folder(run, capsys):
    for name in ("run_config.yaml", "config.yaml", "metrics.jsonl", "curves.png", "last.pt", "best.pt",
                 "model.safetensors", "model.json", "summary.json"):
        assert (run / name).is_file(), name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    info = json.loads((run / "model.json").read_text())
    assert info["task"] == "classify" and info["model_name"] == "vit_digits" and info["classes"] == CLASSES
    assert info["model_kwargs"]["num_classes"] == 3 and info["img_size"] == 16  # the preset's size
    assert {"mean", "std", "crop_pct", "interpolation"} <= set(info)
    saved = resolve_config(ClassifyConfig, run / "run_config.yaml")
    assert saved.model.kwargs == {"embed_dim": 32, "depth": 1, "num_heads": 2} and saved.train.epochs == 2
    summary = json.loads((run / "summary.json").read_text())
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert summary["val_top1"] == max(r["val_top1"] for r in history)  # the shipped weights are the best epoch's


def test_shipped_weights_are_the_best_checkpoints(run):
    """model.safetensors == best.pt's weights; load_classifier reads the run folder, the file and best.pt alike."""
    model, info = load_classifier(run / "model.safetensors")
    best = torch.load(run / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    for checkpoint in (run, run / "best.pt"):
        other, other_info = load_classifier(checkpoint)
        assert other_info == info
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in model.state_dict().items())


def test_train_pvt_and_predict_without_overlay(digits, tmp_path, capsys):
    assert _train(digits, tmp_path / "pvt", model="pvt_v2_b0", tiny=TINY_PVT, epochs=1) == 0
    assert "trained pvt_v2_b0 for 1 epochs" in capsys.readouterr().out
    image = _first(digits / "val" / "2")
    assert main(["predict", str(image), "--checkpoint", str(tmp_path / "pvt"), "--out", str(tmp_path / "p")]) == 0
    report = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert report["model"] == "pvt_v2_b0" and report["predictions"][0]["attention_overlay"] is None
    assert len(report["predictions"][0]["top5"]) == 3 and not list((tmp_path / "p").glob("*.png"))


def test_resume_continues_from_run_config(run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    # Only --out and --resume: model, data and the tiny settings come from the run's run_config.yaml.
    with pytest.warns(UserWarning, match="epochs"):
        assert main(["train", "classify", "--out", str(resumed), "--resume", "--set", "train.epochs=3"]) == 0
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert lines[:2] == [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# -------------------------------------------------------------------------------------------- eval
@pytest.mark.parametrize("checkpoint", ["model.safetensors", "last.pt", "."])
def test_eval(run, digits, tmp_path, checkpoint, capsys):
    assert main(["eval", "classify", "--checkpoint", str(run / checkpoint), "--data", str(digits / "val"),
                 "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert {"top1", "top5", "loss", "num_images", "model"} <= set(result)
    assert result["num_images"] == 18 and result["top5"] == 100.0  # 3 classes: top-5 always right
    out = capsys.readouterr().out
    assert f"top-1 {result['top1']:.2f}%" in out and "top-5 100.00%" in out and "eval_metrics.json" in out


@pytest.mark.skipif(not packed_weights_supported(), reason="this torch build has no MKL")
def test_eval_on_packed_weights_gives_the_same_metrics(run, digits, tmp_path):
    runs = {}
    for flags in ([], ["--packed-weights"]):
        out = tmp_path / ("packed" if flags else "plain")
        assert main(["eval", "classify", "--checkpoint", str(run), "--data", str(digits / "val"), "--out", str(out),
                     "--batch-size", "4", *flags]) == 0  # 18 images: the packed path serves batches 2-4
        runs[bool(flags)] = json.loads((out / "eval_metrics.json").read_text())
    assert runs[True]["top1"] == runs[False]["top1"] and runs[True]["loss"] == pytest.approx(runs[False]["loss"],
                                                                                            abs=1e-5)


def test_eval_packed_weights_without_mkl_is_a_one_line_error(run, digits, monkeypatch, capsys):
    monkeypatch.setattr("vistra.layers.linear.packed_weights_supported", lambda: False)
    assert main(["eval", "classify", "--checkpoint", str(run), "--data", str(digits / "val"),
                 "--packed-weights"]) == 2
    assert "need a torch build with MKL" in capsys.readouterr().err


def test_eval_matches_manual_count(run, digits, tmp_path):
    """top-1 from the CLI equals counting argmax hits over the val images by hand."""
    assert main(["eval", "classify", "--checkpoint", str(run), "--data", str(digits / "val"), "--out",
                 str(tmp_path)]) == 0
    model, info = load_classifier(run)
    transform = info.build_eval_transform()
    hits = 0
    for label in CLASSES:
        for path in (digits / "val" / label).iterdir():
            with torch.no_grad():
                logits = model(transform(read_image(path)).unsqueeze(0))  # (1, 3)
            hits += info.classes[int(logits.argmax())] == label
    assert json.loads((tmp_path / "eval_metrics.json").read_text())["top1"] == pytest.approx(100.0 * hits / 18)


# ----------------------------------------------------------------------------------------- predict
def test_predict_json_and_overlay(run, digits, tmp_path, capsys):
    images = [str(_first(digits / "val" / "0")), str(_first(digits / "val" / "2"))]
    assert main(["predict", *images, "--checkpoint", str(run / "model.safetensors"), "--out", str(tmp_path),
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "predictions.json").read_text())
    assert len(printed["predictions"]) == 2
    for item in printed["predictions"]:
        assert len(item["top5"]) == 3 and set(item["top5"][0]) == {"class", "index", "probability"}
        probs = [t["probability"] for t in item["top5"]]
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-4
        overlay = Path(item["attention_overlay"])
        assert overlay.suffix == ".png" and overlay.parent == tmp_path
        with Image.open(overlay) as png:
            assert png.size[0] == 2 * (png.size[1] - 24)  # [view | overlay] side by side under a title strip


def test_predict_lines_and_no_overlay(run, digits, tmp_path, capsys):
    image = _first(digits / "val" / "1")
    assert main(["predict", str(image), "--checkpoint", str(run), "--out", str(tmp_path), "--no-overlay",
                 "--topk", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{image}: ") and out[-1] == f"wrote {tmp_path / 'predictions.json'}"
    item = json.loads((tmp_path / "predictions.json").read_text())["predictions"][0]
    assert len(item["top5"]) == 2 and item["attention_overlay"] is None


def test_predict_foreign_timm_checkpoint_needs_model_and_matches_timm(digits, tmp_path, capsys):
    """A timm state dict of vit_digits' shape: refused without --model, then the same probabilities as timm."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    from vistra.registry import create_model

    c = create_model("vit_digits", num_classes=3).config
    timm_model = TimmViT(img_size=c.img_size, patch_size=c.patch_size, embed_dim=c.embed_dim, depth=c.depth,
                         num_heads=c.num_heads, num_classes=3).eval()
    torch.save(timm_model.state_dict(), tmp_path / "timm.pth")
    image = _first(digits / "val" / "0")
    assert main(["predict", str(image), "--checkpoint", str(tmp_path / "timm.pth")]) == 2
    assert "timm.pth: does not say which model it holds; pass --model NAME" in _error_line(capsys)

    assert main(["predict", str(image), "--checkpoint", str(tmp_path / "timm.pth"), "--model", "vit_digits",
                 "--out", str(tmp_path / "p"), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top5"]
    x = ClassifierInfo("vit_digits", CLASSES, img_size=c.img_size).build_eval_transform()(read_image(image))
    with torch.no_grad():
        expected = timm_model(x.unsqueeze(0)).softmax(-1)[0]  # (3,)
    for t in top:
        assert t["probability"] == pytest.approx(float(expected[t["index"]]), abs=1e-5)


def test_classifier_round_trip_keeps_preprocessing(tmp_path):
    from vistra.registry import create_model

    model = create_model("vit_digits", num_classes=2, embed_dim=16, depth=1, num_heads=2)
    info = ClassifierInfo("vit_digits", ["cat", "dog"], {"num_classes": 2, "embed_dim": 16, "depth": 1,
                                                          "num_heads": 2}, img_size=32, mean=(0.5,) * 3,
                          std=(0.25,) * 3, crop_pct=1.0, interpolation="bilinear")
    save_classifier(model, tmp_path, info)
    loaded, again = load_classifier(tmp_path)
    assert again == info
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert json.loads((tmp_path / "model.json").read_text())["task"] == "classify"
    save_trained(model, tmp_path / "seg", {**info.to_json(), "task": "segment"})
    with pytest.raises(CheckpointError, match=r"seg/model\.safetensors: holds a segment model, not a classifier"):
        load_classifier(tmp_path / "seg")


# --------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", BAD)
def test_predict_bad_image_is_one_line(run, odd_images, tmp_path, name, capsys):
    assert main(["predict", str(odd_images / name), "--checkpoint", str(run), "--out", str(tmp_path)]) == 2
    line = _error_line(capsys)
    assert f"{odd_images / name}: cannot read image" in line


def test_gray_rgba_and_16bit_images_are_converted(run, odd_images, tmp_path, capsys):
    images = [str(odd_images / n) for n in ODD]
    assert main(["predict", *images, "--checkpoint", str(run), "--out", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["image"] for p in report["predictions"]] == images
    gray = next(p for p in report["predictions"] if p["image"].endswith("gray.png"))["top5"]
    deep = next(p for p in report["predictions"] if p["image"].endswith("deep.png"))["top5"]
    assert gray == deep  # 16-bit 257*v scales back to the same 8-bit image


@pytest.fixture()
def bad_digits(digits, odd_images, tmp_path):
    """The tiny digits with the three bad files and the three odd-but-valid ones in train/1 and val/1."""
    data = tmp_path / "data"
    shutil.copytree(digits, data)
    for split in ("train", "val"):
        for name in BAD + ODD:
            shutil.copy(odd_images / name, data / split / "1" / name)
    return data


def test_corrupt_image_stops_training_without_skip_bad(bad_digits, tmp_path, capsys):
    assert _train(bad_digits, tmp_path / "run", "train.drop_last=false", epochs=1) == 2
    line = _error_line(capsys)
    assert any(f"{bad_digits / 'train' / '1' / n}: cannot read image" in line for n in BAD)


def test_skip_bad_counts_in_train_and_eval(bad_digits, tmp_path, capsys):
    assert _train(bad_digits, tmp_path / "run", "train.drop_last=false", "--skip-bad", epochs=1) == 0
    out = capsys.readouterr().out
    assert "skipped 6 unreadable image file(s):" in out  # 3 in train, 3 in val
    for split in ("train", "val"):
        for name in BAD:
            assert str(bad_digits / split / "1" / name) in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["num_train"] == 48 + 6 and len(summary["skipped_files"]) == 6

    assert main(["eval", "classify", "--checkpoint", str(tmp_path / "run"), "--data", str(bad_digits / "val"),
                 "--skip-bad"]) == 0
    out = capsys.readouterr().out
    assert "skipped 3 unreadable image file(s):" in out and "(21 images)" in out  # 18 digits + 3 odd ones
    assert main(["eval", "classify", "--checkpoint", str(tmp_path / "run"), "--data", str(bad_digits / "val")]) == 2
    assert "cannot read image" in _error_line(capsys)


def test_empty_class_folder_is_one_line(digits, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(digits, data)
    (data / "train" / "7").mkdir()
    (data / "train" / "7" / "readme.txt").write_text("no images here")
    assert _train(data, tmp_path / "run") == 2
    assert f"{data / 'train' / '7'}: class folder has no images" in _error_line(capsys)


def test_unknown_model_is_one_line(digits, tmp_path, capsys):
    code = main(["train", "classify", "--model", "vit_digitz", "--data", str(digits), "--out", str(tmp_path)])
    assert code == 2
    line = _error_line(capsys)
    assert "vit_digitz" in line and "vit_digits" in line  # names the close match
    code = main(["train", "classify", "--model", "vit_digits", "--data", str(digits), "--out", str(tmp_path),
                 "--set", "model.kwargs={depht: 2}"])
    assert code == 2 and "depht" in _error_line(capsys)


def test_missing_checkpoint_names_path(digits, tmp_path, capsys):
    missing = tmp_path / "nope" / "model.safetensors"
    assert main(["eval", "classify", "--checkpoint", str(missing), "--data", str(digits / "val")]) == 2
    assert f"{missing}: checkpoint does not exist" in _error_line(capsys)
    assert main(["predict", str(missing), "--checkpoint", str(missing)]) == 2
    assert f"{missing}: checkpoint does not exist" in _error_line(capsys)
    assert main(["predict", str(missing), "--checkpoint", str(tmp_path)]) == 2
    assert f"{tmp_path}: folder holds none of" in _error_line(capsys)


def test_wrong_model_for_checkpoint_is_one_line(run, digits, capsys):
    assert main(["predict", str(_first(digits / "val" / "0")), "--checkpoint", str(run), "--model",
                 "pvt_v2_b0"]) == 2
    line = _error_line(capsys)
    assert f"{run / 'model.safetensors'}: checkpoint" in line and "does not fit" in line


def test_missing_data_and_bad_config(tmp_path, capsys):
    assert main(["train", "classify", "--model", "vit_digits", "--data", str(tmp_path / "none")]) == 2
    assert str(tmp_path / "none") in _error_line(capsys)
    assert main(["train", "classify", "--model", "vit_digits", "--data", str(tmp_path), "--set", "train.lr=fast"]) == 2
    assert "train.lr" in _error_line(capsys)
    assert main(["train", "classify", "--config", str(tmp_path / "x.yaml")]) == 2
    assert "x.yaml" in _error_line(capsys)


def test_debug_env_shows_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VISTRA_DEBUG", "1")
    assert main(["train", "classify", "--model", "nope_model", "--data", str(tmp_path)]) == 2
    assert "Traceback" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ config
def test_set_overrides_are_typed(tmp_path):
    cfg = resolve_classify_config(
        sets=["train.lr=1e-3", "train.epochs=7", "train.amp=true", "aug.scale=[0.5, 1]", "train.clip_grad=null",
              "model.name=vit_digits", "train.lr_drop_epochs=[3,5]", "data.mean=[0.5,0.5,0.5]"],
        flags={"data.root": str(tmp_path), "train.out_dir": None},
    )
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 7 and cfg.train.amp is True and cfg.train.clip_grad is None
    assert cfg.aug.scale == (0.5, 1.0) and cfg.train.lr_drop_epochs == [3, 5]
    assert cfg.model.name == "vit_digits" and cfg.data.root == str(tmp_path) and cfg.data.mean == (0.5, 0.5, 0.5)
    assert cfg.train.out_dir == "runs/classify"  # a None flag leaves the default
    for bad, key in [("train.epochs=2.5", "train.epochs"), ("trian.lr=1", "trian.lr"), ("aug.scale=[1]", "aug.scale"),
                     ("train.amp=maybe", "train.amp"), ("train", "train")]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            resolve_classify_config(sets=[bad])


def test_yaml_round_trip_and_precedence(tmp_path):
    cfg = resolve_classify_config(sets=["train.lr=0.002", "aug.hflip=0", "model.kwargs={depth: 2}"])
    path = save_config(cfg, tmp_path / "c.yaml")
    assert resolve_config(ClassifyConfig, path) == cfg
    # --set beats the YAML, which beats the defaults; flags sit between the two
    again = resolve_classify_config(str(path), sets=["train.epochs=4"], flags={"model.name": "vit_digits"})
    assert again.train.lr == 0.002 and again.train.epochs == 4 and again.model.name == "vit_digits"
    assert again.model.kwargs == {"depth": 2}


def test_shipped_digits_config_matches_demo_recipe():
    shipped = yaml.safe_load((REPO / "configs" / "classify_digits.yaml").read_text())
    assert shipped == DIGITS_RECIPE
    assert resolve_config(ClassifyConfig, REPO / "configs" / "classify_digits.yaml").aug.hflip == 0


def test_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out
    assert main(["train"]) == 2


def test_topk_correct_and_rollout():
    logits = torch.tensor([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    assert topk_correct(logits, torch.tensor([1, 2])) == {1: 1, 5: 2}
    uniform = [torch.full((2, 3, 5, 5), 0.2) for _ in range(3)]  # (B, heads, 1+N, 1+N)
    heat = attention_rollout(uniform)
    assert heat.shape == (2, 4) and torch.allclose(heat, heat[:, :1].expand(2, 4))
    focused = torch.zeros(1, 1, 5, 5)
    focused[..., 3] = 1.0  # every token attends to patch 3 (token index 3)
    heat = attention_rollout([focused, focused])
    assert heat.argmax().item() == 2 and heat.sum() <= 1
