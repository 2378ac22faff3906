"""Fine-tuning from pretrained backbones: `--backbone-weights` loads an ImageNet (timm / torchvision / official)
checkpoint into a task model's backbone only, and layer-wise learning rates for the backbone."""
import pytest
import timm
import torch
import torchvision

import vistra
from vistra.checkpoints import CheckpointError
from vistra.checkpoints.backbone import find_backbone, load_backbone_weights
from vistra.cli import main
from vistra.data.digits_mot import make_digits_mot
from vistra.engine import build_param_groups
from vistra.engine.optim import backbone_lr_scales, layer_depths
from vistra.trained import read_trained

TINY_TRACKER = {"d_model": 32, "n_heads": 4, "n_points": 2, "dec_layers": 1, "dim_feedforward": 64,
                "head_channels": 16}
TINY_DETR = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1,
             "dim_feedforward": 64, "num_queries": 5, "num_classes": 3}


@pytest.fixture(scope="module")
def timm_pvt_v2_b0(tmp_path_factory):
    """A timm pvt_v2_b0 ImageNet classifier with random weights, saved as a plain .pth state dict."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "pvt_v2_b0_timm.pth"
    torch.save(timm.create_model("pvt_v2_b0", pretrained=False).state_dict(), path)
    return path


def _reference_backbone(path):
    """vistra's pvt_v2_b0 classifier loaded from the file (its conversion is checked by the timm parity tests)."""
    return vistra.create_model("pvt_v2_b0", pretrained=path).state_dict()


def _heads(model):
    prefix, _ = find_backbone(model)
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(prefix)}


def test_tracker_backbone_equals_the_timm_file_and_heads_stay_fresh(timm_pvt_v2_b0):
    model = vistra.create_model("transcenter_pvt_v2_b0", **TINY_TRACKER)
    heads = _heads(model)
    load = load_backbone_weights(model, timm_pvt_v2_b0)
    ref = _reference_backbone(timm_pvt_v2_b0)
    state = model.state_dict()
    assert load.prefix == "backbone.model" and load.report.format == "timm_pvt_v2"
    assert len(load.loaded) == len([k for k in ref if not k.startswith("head.")]) > 100
    for key in load.loaded:
        torch.testing.assert_close(state[key], ref[key.removeprefix("backbone.model.")], rtol=0, atol=0)
    for key, value in heads.items():  # the decoder and heads keep their initialisation
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert load.report.skipped_head == ["head.bias", "head.weight"]
    assert {"input_proj", "det_decoder", "hm", "tracking"} <= set(load.fresh)
    summary = load.summary()
    assert "loaded into backbone.model" in summary and "head.weight" in summary and "hm" in summary


def test_detr_resnet_backbone_from_a_torchvision_file(tmp_path):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18()
    for m in resnet.modules():  # non-trivial BatchNorm statistics, so FrozenBatchNorm2d's buffers are checked too
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    model = vistra.create_model("detr", **TINY_DETR)
    load = load_backbone_weights(model, path)
    body = model.backbone.body.state_dict()
    file = resnet.state_dict()
    assert load.prefix == "backbone.body" and load.report.skipped_head == ["fc.bias", "fc.weight"]
    for key, value in body.items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, file[key], rtol=0, atol=0)
    assert "transformer" in load.fresh and "class_embed" in load.fresh


def test_backbone_part_of_a_whole_detector_file(tmp_path):
    torch.manual_seed(2)
    trained = vistra.create_model("detr", **TINY_DETR)
    path = tmp_path / "detector.pth"
    torch.save({"model": trained.state_dict()}, path)
    model = vistra.create_model("detr", **{**TINY_DETR, "num_classes": 7})
    load_backbone_weights(model, path)
    for key, value in model.backbone.body.state_dict().items():
        torch.testing.assert_close(value, trained.backbone.body.state_dict()[key], rtol=0, atol=0)
    assert not torch.equal(model.transformer.encoder.layers[0].linear1.weight,
                           trained.transformer.encoder.layers[0].linear1.weight)


def test_a_backbone_of_another_size_is_refused_naming_the_shapes(timm_pvt_v2_b0):
    model = vistra.create_model("semfpn_pvt_v2_b2", num_classes=3, img_size=64)
    with pytest.raises(CheckpointError, match="pvt_v2_b0_timm.pth"):
        load_backbone_weights(model, timm_pvt_v2_b0)


def test_find_backbone_of_each_task_model():
    assert find_backbone(vistra.create_model("detr", **TINY_DETR))[0] == "backbone.body"
    assert find_backbone(vistra.create_model("semfpn_pvt_v2_b0", num_classes=3, img_size=64))[0] == "backbone.model"
    with pytest.raises(ValueError, match="no backbone"):
        find_backbone(vistra.create_model("vit_tiny_patch16_224"))


# ----------------------------------------------------------------------------------- layer-wise lr
def test_layer_depths_of_vit_pvt_and_resnet():
    depths, deepest = layer_depths(vistra.create_model("vit_tiny_patch16_224"))
    assert depths["cls_token"] == depths["patch_embed.proj.weight"] == 0
    assert depths["blocks.0.attn.qkv.weight"] == 1 and depths["blocks.11.mlp.fc2.bias"] == 12
    assert depths["norm.weight"] == deepest == 13
    depths, deepest = layer_depths(vistra.create_model("pvt_v2_b0"))  # depths 2-2-2-2
    assert depths["patch_embed1.proj.weight"] == 0 and depths["block1.1.norm1.weight"] == 2
    assert depths["patch_embed2.proj.weight"] == depths["block2.0.norm1.weight"] == 3
    assert depths["block4.1.mlp.fc2.weight"] == 8 and deepest == depths["norm4.weight"] == 9
    depths, deepest = layer_depths(torchvision.models.resnet18())
    assert depths["conv1.weight"] == 0 and depths["layer1.0.conv1.weight"] == 1 and depths["layer4.1.bn2.bias"] == 8


def test_backbone_lr_scales_decay_towards_the_stem():
    model = vistra.create_model("semfpn_pvt_v2_b0", num_classes=3, img_size=64)
    prefix, body = find_backbone(model)
    assert backbone_lr_scales(body, prefix, 0.5) == {"backbone.model": 0.5}
    scales = backbone_lr_scales(body, prefix, 0.5, layer_decay=0.8)
    assert scales["backbone.model.norm4.weight"] == 0.5
    assert scales["backbone.model.block4.1.mlp.fc2.weight"] == pytest.approx(0.5 * 0.8)
    assert scales["backbone.model.patch_embed1.proj.weight"] == pytest.approx(0.5 * 0.8 ** 9)
    groups = build_param_groups(model, 0.01, {"head": 10.0, **scales})
    by_param = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert by_param[id(named["backbone.model.block1.0.attn.q.weight"])] == pytest.approx(0.5 * 0.8 ** 8)
    assert all(by_param[id(p)] == 10.0 for n, p in named.items() if n.startswith("head."))
    with pytest.raises(ValueError, match="layer_decay"):
        backbone_lr_scales(body, prefix, 1.0, layer_decay=0.0)


# ------------------------------------------------------------------------------------------ CLI
def test_train_track_with_backbone_weights(timm_pvt_v2_b0, tmp_path, capsys):
    """A frozen-lr backbone (lr_backbone_mult=0) ships exactly the file's tensors; the run records the load."""
    data = tmp_path / "digits-mot"
    make_digits_mot(data, n_train=1, n_val=0, length=6, size=(64, 64), digit_size=(16, 24), max_objects=2, seed=3)
    run = tmp_path / "run"
    tiny = [f"model.{k}={v}" for k, v in TINY_TRACKER.items()]
    code = main(["train", "track", "--data", str(data), "--out", str(run), "--backbone-weights",
                 str(timm_pvt_v2_b0), "--set", *tiny, "class_agnostic=true", "scales=[64]", "max_size=64",
                 "val_split=null", "epochs=1", "batch_size=4", "lr_backbone_mult=0", "progress=false"])
    assert code == 0
    out = capsys.readouterr().out
    assert "backbone weights: " in out and "format timm_pvt_v2" in out
    state, info, _ = read_trained(run)
    assert info["backbone_weights"]["loaded"] > 100 and info["backbone_weights"]["format"] == "timm_pvt_v2"
    assert info["recipe"]["backbone_weights"] == str(timm_pvt_v2_b0)
    ref = _reference_backbone(timm_pvt_v2_b0)
    backbone = {k.removeprefix("backbone.model."): v for k, v in state.items() if k.startswith("backbone.model.")}
    assert len(backbone) == len([k for k in ref if not k.startswith("head.")])
    for key, value in backbone.items():
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0)


def test_train_detect_and_segment_take_backbone_weights(timm_pvt_v2_b0, tmp_path, capsys):
    """`train detect` (backbone lr 0) and `train segment` (lr 1e-12, layer-wise decay) ship the file's backbone."""
    det_data, seg_data = tmp_path / "det", tmp_path / "seg"
    assert main(["data", "make", "digits-det", str(det_data), "--train", "4", "--val", "0", "--canvas", "64", "96",
                 "--digit-size", "16", "32", "--max-digits", "2"]) == 0
    assert main(["data", "make", "digits-seg", str(seg_data), "--n-train", "4", "--n-val", "0"]) == 0
    det_run, seg_run = tmp_path / "det_run", tmp_path / "seg_run"
    code = main(["train", "detect", "--model", "deformable_detr_pvt_v2_b0", "--data", str(det_data), "--out",
                 str(det_run), "--backbone-weights", str(timm_pvt_v2_b0), "--set", "model.hidden_dim=32",
                 "model.nheads=2", "model.enc_layers=1", "model.dec_layers=1", "model.dim_feedforward=64",
                 "model.num_queries=8", "scales=[64]", "max_size=96", "crop_resize=null", "val_split=null",
                 "epochs=1", "batch_size=4", "lr_backbone=0", "progress=false"])
    assert code == 0
    code = main(["train", "segment", "--model", "semfpn_pvt_v2_b0", "--data", str(seg_data), "--out", str(seg_run),
                 "--backbone-weights", str(timm_pvt_v2_b0), "--set", "crop_size=48", "scale=[48,48]",
                 "val_split=null", "model.fpn_channels=16", "epochs=1", "batch_size=4", "lr=1e-12", "layer_decay=0.5",
                 "progress=false"])
    assert code == 0
    assert capsys.readouterr().out.count("backbone weights: 176 tensors") == 2
    ref = _reference_backbone(timm_pvt_v2_b0)
    for run, prefix, atol in ((det_run, "backbone.body.", 0.0), (seg_run, "backbone.model.", 1e-9)):
        state, info, _ = read_trained(run)
        assert info["backbone_weights"]["loaded"] == 176
        backbone = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        assert len(backbone) == 176
        for key, value in backbone.items():
            torch.testing.assert_close(value, ref[key], rtol=0, atol=atol)
