"""`vistra data make digits-det`, `train detect`, `eval detect` and `predict` with a detector, through main()."""
import json

import pytest
import torch

from vistra.cli import main

TINY = ["model.backbone=resnet18", "model.hidden_dim=32", "model.nheads=2", "model.enc_layers=1",
        "model.dec_layers=1", "model.dim_feedforward=64", "model.num_queries=8"]
SMALL_IMAGES = ["scales=[64]", "max_size=96", "crop_resize=null", "hflip=0", "eval_size=64", "eval_max_size=96"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_det") / "digits"
    assert main(["data", "make", "digits-det", str(root), "--train", "8", "--val", "3", "--canvas", "64", "96",
                 "--digit-size", "16", "32", "--max-digits", "3"]) == 0
    return root


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cli_det_run") / "run"
    try:
        code = main(["train", "detect", "--model", "detr", "--data", str(digits), "--out", str(out), "--set", *TINY,
                     *SMALL_IMAGES, "epochs=1", "batch_size=4", "progress=false"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return out


def test_make_digits_det_writes_coco_and_says_so(digits, capsys):
    made = json.loads((digits / "annotations" / "instances_train.json").read_text())
    assert len(made["images"]) == 8 and [c["id"] for c in made["categories"]] == list(range(10))
    assert len(list((digits / "val").glob("*.png"))) == 3


def test_train_eval_predict_round_trip(digits, run, tmp_path, capsys):
    info = json.loads((run / "model.json").read_text())
    assert info["task"] == "detect" and info["model_kwargs"]["hidden_dim"] == 32 and info["recipe"]["scales"] == [64]
    assert (run / "model.safetensors").is_file()

    assert main(["eval", "detect", "--checkpoint", str(run), "--data", str(digits), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["num_images"] == 3 and 0.0 <= stats["AP"] <= 1.0 and stats["split"] == "val"

    results = tmp_path / "dets.json"
    assert main(["eval", "detect", "--checkpoint", str(run / "model.safetensors"), "--val-images",
                 str(digits / "val"), "--val-ann", str(digits / "annotations" / "instances_val.json"),
                 "--results", str(results)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{run / 'model.safetensors'} on val (3 images): AP ") and "APl" in line
    assert {"image_id", "category_id", "bbox", "score"} <= set(json.loads(results.read_text())[0])

    (tmp_path / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "pred"
    assert main(["predict", str(digits / "val" / "000001.png"), str(tmp_path / "broken.png"), "--checkpoint",
                 str(run), "--out", str(out), "--score-threshold", "0"]) == 0
    printed = capsys.readouterr().out
    assert "000001.png: 8 objects" in printed and "skipped 1 unreadable" in printed
    assert (out / "000001_det.png").is_file() and len(json.loads((out / "predictions.json").read_text())) == 8


def test_bad_input_is_one_error_line(digits, run, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [}')
    code = main(["eval", "detect", "--checkpoint", str(run), "--val-images", str(digits / "val"), "--val-ann", str(bad)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"vistra: error: {bad}: not valid JSON") and "\n" not in err

    code = main(["train", "detect", "--model", "detr", "--data", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no train split found" in err and "\n" not in err

    code = main(["train", "detect", "--model", "detr", "--data", str(digits), "--set", "scale=3"])
    assert code == 2 and "unknown detection setting 'scale'" in capsys.readouterr().err

    code = main(["eval", "detect", "--checkpoint", str(tmp_path), "--data", str(digits)])
    assert code == 2 and "holds none of model.safetensors" in capsys.readouterr().err


def test_annotations_pointing_outside_the_image_folder_need_allow_outside_root(digits, run, tmp_path, capsys):
    """file_names like ../shared/x.png are refused with the file, the image and the flag named; with
    --allow-outside-root, `eval detect` and `train detect` read them."""
    ann = json.loads((digits / "annotations" / "instances_val.json").read_text())
    for image in ann["images"]:
        image["file_name"] = f"../val/{image['file_name']}"  # the same files, reached by climbing out
    moved = tmp_path / "val_outside.json"
    moved.write_text(json.dumps(ann))
    args = ["--val-images", str(digits / "val"), "--val-ann", str(moved)]
    assert main(["eval", "detect", "--checkpoint", str(run), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vistra: error: {moved}: image id") and "leaves the dataset root" in err
    assert "--allow-outside-root" in err and "\n" not in err
    assert main(["eval", "detect", "--checkpoint", str(run), *args, "--allow-outside-root", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == len(ann["images"])
    out = tmp_path / "run"
    code = main(["train", "detect", "--model", "detr", "--train-images", str(digits / "val"), "--train-ann", str(moved),
                 "--out", str(out), "--allow-outside-root", "--set", *TINY, *SMALL_IMAGES, "val_split=null",
                 "epochs=1", "batch_size=2", "progress=false"])
    assert code == 0 and (out / "model.safetensors").is_file()
