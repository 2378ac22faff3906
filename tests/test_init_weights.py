"""Starting from a trained model (`--init-weights`): tensors of matching name and shape load, heads for other
classes start fresh and are listed; official DETR files convert first; `vistra train track` takes a run folder."""
import pytest
import torch

import vistra
from vistra.checkpoints import CheckpointError
from vistra.checkpoints.init_weights import load_matching_weights, start_from
from vistra.cli import main
from vistra.data.digits_traffic import make_digits_traffic
from vistra.trained import read_trained, save_trained

TINY_TRACKER = {"d_model": 32, "n_heads": 4, "n_points": 2, "dec_layers": 1, "dim_feedforward": 64,
                "head_channels": 16}
TINY_DETR = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1,
             "dim_feedforward": 64, "num_queries": 5}


def test_a_one_class_tracker_starts_a_three_class_one(tmp_path):
    torch.manual_seed(0)
    trained = vistra.create_model("transcenter_pvt_v2_b0", num_classes=1, **TINY_TRACKER)
    save_trained(trained, tmp_path / "run", {"task": "track", "model_name": "transcenter_pvt_v2_b0"})
    torch.manual_seed(1)
    model = vistra.create_model("transcenter_pvt_v2_b0", num_classes=3, **TINY_TRACKER)
    init = load_matching_weights(model, tmp_path / "run")  # a run folder: its weights file
    ours, theirs = model.state_dict(), trained.state_dict()
    changed = [k for k in ours if ours[k].shape != theirs[k].shape]
    assert changed and all(k.startswith("hm.") for k in changed)  # only the heatmap's last layer has 3 outputs
    assert sorted(f.split(" ")[0] for f in init.fresh) == sorted(changed)
    assert all("(file (1" in f for f in init.fresh)  # the shapes are named
    assert len(init.loaded) == len(ours) - len(changed) and not init.unused
    for key in init.loaded:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)
    assert "starting fresh: hm." in init.summary() and str(tmp_path / "run") in init.summary()


def test_official_detr_file_fine_tunes_to_other_classes(tmp_path):
    """The official DETR recipe for new classes: everything but class_embed comes from the COCO file."""
    torch.manual_seed(0)
    coco = vistra.create_model("detr", num_classes=91, **TINY_DETR)
    official = {k.replace("backbone.body.", "backbone.0.body.").replace("backbone.position_embedding.", "backbone.1."): v
                for k, v in coco.state_dict().items()}
    path = tmp_path / "detr-official.pth"
    torch.save({"model": official}, path)
    model = vistra.create_model("detr", num_classes=4, **TINY_DETR)
    init = load_matching_weights(model, path)
    assert init.format == "detr_official"
    assert [f.split(" ")[0] for f in init.fresh] == ["class_embed.weight", "class_embed.bias"]
    for key in init.loaded:
        torch.testing.assert_close(model.state_dict()[key], coco.state_dict()[key], rtol=0, atol=0)
    assert "backbone.body.layer1.0.conv1.weight" in init.loaded


def test_nothing_in_common_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, path)
    model = vistra.create_model("detr", num_classes=4, **TINY_DETR)
    with pytest.raises(CheckpointError, match="other.pth: none of its 1 tensors"):
        load_matching_weights(model, path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_matching_weights(model, tmp_path / "missing.pth")
    assert start_from(model, None) is None


def test_train_track_from_a_class_agnostic_run(tmp_path, capsys):
    """`--init-weights RUN` on `train track`: a class-agnostic run on digits-traffic starts a per-class one; with
    lr 1e-12 the shipped model holds the first run's tensors except the 3-channel heatmap layer."""
    data = tmp_path / "traffic"
    make_digits_traffic(data, n_train=1, n_val=0, length=6, size=(96, 72), digit_size=(16, 22), max_objects=3,
                        seed=2)
    tiny = [f"model.{k}={v}" for k, v in TINY_TRACKER.items()]
    common = [*tiny, "scales=[72]", "max_size=96", "val_split=null", "epochs=1", "batch_size=4", "progress=false"]
    first, second = tmp_path / "agnostic", tmp_path / "per-class"
    assert main(["train", "track", "--data", str(data), "--out", str(first), "--set", *common,
                 "class_agnostic=true"]) == 0
    assert main(["train", "track", "--data", str(data), "--out", str(second), "--init-weights", str(first),
                 "--set", *common, "lr=1e-12", "classes=[Car,Pedestrian,Cyclist]"]) == 0
    assert "initial weights: " in capsys.readouterr().out
    start, _, _ = read_trained(first)
    state, info, _ = read_trained(second)
    assert info["classes"] == ["Car", "Pedestrian", "Cyclist"]
    assert info["init_weights"]["fresh"] and all(f.startswith("hm.") for f in info["init_weights"]["fresh"])
    for key, value in state.items():
        if value.shape == start[key].shape:
            torch.testing.assert_close(value, start[key], rtol=0, atol=1e-9)
        else:
            assert key.startswith("hm.") and value.shape[0] == 3
