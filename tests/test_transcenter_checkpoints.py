"""Official TransCenter V2 / TransCenter-Lite checkpoints -> vistra's TransCenter (checkpoints/convert_transcenter.py):
what converts lands in the right tensor, what cannot is reported on both sides, and `vistra convert` writes it."""
from __future__ import annotations

import argparse

import pytest
import torch
from safetensors import safe_open

import vistra
from vistra.checkpoints import CheckpointError, detect_format, load_pretrained
from vistra.checkpoints.convert_transcenter import detect_transcenter_format
from vistra.cli import main

B0 = {"embed_dims": (32, 64, 160, 256), "depths": (2, 2, 2, 2), "mlp_ratios": (8, 8, 4, 4), "sr_ratios": (8, 4, 2, 1)}
TINY = {"hidden": 32, "dec_layers": 2, "n_points": 3}  # official sizes shrunk (the code takes them as arguments)
TINY_MODEL = {"d_model": 32, "n_heads": 8, "n_points": 3, "dec_layers": 2, "head_channels": 16, "impl": "fast"}


def _pvt_v2(shapes: dict, prefix: str, embed_dims, depths, mlp_ratios, sr_ratios) -> None:
    """models/PVT_v2.py PyramidVisionTransformerV2 as TransCenter builds it (qkv_bias=True, linear=False, no head):
    per stage patch_embed{s} (OverlapPatchEmbed: 7x7 stride 4, then 3x3 stride 2), block{s}.j, norm{s}."""
    in_ch = 3
    for s, (dim, depth, ratio, sr) in enumerate(zip(embed_dims, depths, mlp_ratios, sr_ratios), start=1):
        k = 7 if s == 1 else 3
        shapes[f"{prefix}patch_embed{s}.proj.weight"] = (dim, in_ch, k, k)
        shapes[f"{prefix}patch_embed{s}.proj.bias"] = (dim,)
        shapes[f"{prefix}patch_embed{s}.norm.weight"] = shapes[f"{prefix}patch_embed{s}.norm.bias"] = (dim,)
        hidden = dim * ratio
        for j in range(depth):
            b = f"{prefix}block{s}.{j}."
            layers = {"norm1": (dim, None), "attn.q": (dim, dim), "attn.kv": (2 * dim, dim), "attn.proj": (dim, dim)}
            for name, (out, inp) in layers.items():
                shapes[f"{b}{name}.weight"] = (out,) if inp is None else (out, inp)
                shapes[f"{b}{name}.bias"] = (out,)
            if sr > 1:  # Attention: sr = Conv2d(dim, dim, sr, stride=sr), norm = LayerNorm(dim)
                shapes[f"{b}attn.sr.weight"], shapes[f"{b}attn.sr.bias"] = (dim, dim, sr, sr), (dim,)
                shapes[f"{b}attn.norm.weight"] = shapes[f"{b}attn.norm.bias"] = (dim,)
            shapes[f"{b}norm2.weight"] = shapes[f"{b}norm2.bias"] = (dim,)
            shapes[f"{b}mlp.fc1.weight"], shapes[f"{b}mlp.fc1.bias"] = (hidden, dim), (hidden,)
            shapes[f"{b}mlp.dwconv.dwconv.weight"], shapes[f"{b}mlp.dwconv.dwconv.bias"] = (hidden, 1, 3, 3), (hidden,)
            shapes[f"{b}mlp.fc2.weight"], shapes[f"{b}mlp.fc2.bias"] = (dim, hidden), (dim,)
        shapes[f"{prefix}norm{s}.weight"] = shapes[f"{prefix}norm{s}.bias"] = (dim,)
        in_ch = dim


def official_shapes(lite: bool = False, hidden: int = 256, dec_layers: int = 6, n_points: int = 9,
                    num_classes: int = 1, backbone: dict = B0) -> dict[str, tuple[int, ...]]:
    """{key: shape} of the official model's state_dict ("model" in the released files), written from the
    TransCenter_official sources: tracking/deformable_detr.py (V2) and tracking/deformable_detr_lite.py (Lite)
    for the model, models/deformable_transformer.py / deformable_transformer_lite.py for `transformer`,
    models/PVT_v2.py for `transformer.pvt_encoder`, models/dla.py (IDAUpV3_bis, DeformConv) and the DCNv2 DCN
    module for `ida_up`. Literals (n_heads 8, FFN 1024 / 512, levels 4 / 1, 256 / 64 channels of ida_up and
    the heads, the query FFN's 512) are the code's; the rest are its arguments."""
    shapes: dict[str, tuple[int, ...]] = {}
    t = "transformer."
    for lvl, ch in enumerate(backbone["embed_dims"]):  # Sequential(Conv2d(ch, hidden, 1), GroupNorm(32, hidden))
        shapes[f"{t}input_proj.{lvl}.0.weight"], shapes[f"{t}input_proj.{lvl}.0.bias"] = (hidden, ch, 1, 1), (hidden,)
        shapes[f"{t}input_proj.{lvl}.1.weight"] = shapes[f"{t}input_proj.{lvl}.1.bias"] = (hidden,)
    d_ffn, levels, heads = (512, 1, 8) if lite else (1024, 4, 8)
    for i in range(dec_layers):  # DeformableTransformerDecoderLayer
        p = f"{t}decoder.layers.{i}."
        if not lite:  # self_attn = nn.MultiheadAttention(hidden, 8), norm2 after it (commented out in Lite)
            shapes[p + "self_attn.in_proj_weight"], shapes[p + "self_attn.in_proj_bias"] = (3 * hidden, hidden), (
                3 * hidden,)
            shapes[p + "self_attn.out_proj.weight"], shapes[p + "self_attn.out_proj.bias"] = (hidden, hidden), (hidden,)
            shapes[p + "norm2.weight"] = shapes[p + "norm2.bias"] = (hidden,)
        attn = {"sampling_offsets": heads * levels * n_points * 2, "attention_weights": heads * levels * n_points,
                "value_proj": hidden, "output_proj": hidden}  # MSDeformAttn(hidden, levels, 8, n_points)
        for name, out in attn.items():
            shapes[f"{p}cross_attn.{name}.weight"], shapes[f"{p}cross_attn.{name}.bias"] = (out, hidden), (out,)
        shapes[p + "norm1.weight"] = shapes[p + "norm1.bias"] = (hidden,)
        shapes[p + "pre_linear1.weight"], shapes[p + "pre_linear1.bias"] = (d_ffn, hidden), (d_ffn,)
        shapes[p + "pre_linear2.weight"], shapes[p + "pre_linear2.bias"] = (hidden, d_ffn), (hidden,)
        shapes[p + "pre_norm3.weight"] = shapes[p + "pre_norm3.bias"] = (hidden,)
    shapes[t + "linear1.weight"], shapes[t + "linear1.bias"] = (512, hidden), (512,)  # my_ffn
    shapes[t + "linear2.weight"], shapes[t + "linear2.bias"] = (hidden, 512), (hidden,)
    shapes[t + "norm2.weight"] = shapes[t + "norm2.bias"] = (hidden,)
    _pvt_v2(shapes, t + "pvt_encoder.", **backbone)
    for n in range(4):  # IDAUpV3_bis(64, [256] * 4): node_0 = DeformConv(256, 64), node_1..3 = DeformConv(256, 256)
        out, p = (64 if n == 0 else 256), f"ida_up.node_{n}."
        for stat in ("weight", "bias", "running_mean", "running_var"):  # actf = Sequential(BatchNorm2d, ReLU)
            shapes[f"{p}actf.0.{stat}"] = (out,)
        shapes[p + "actf.0.num_batches_tracked"] = ()
        shapes[p + "conv.weight"], shapes[p + "conv.bias"] = (out, 256, 3, 3), (out,)  # DCN(256, out, 3x3)
        shapes[p + "conv.conv_offset_mask.weight"], shapes[p + "conv.conv_offset_mask.bias"] = (27, 256, 3, 3), (27,)
    heads_out = {"hm": num_classes, "ct_offset_reg_wh": 6} if lite else {
        "hm": num_classes, "ct_offset": 2, "reg": 2, "wh": 2}
    for name, out in heads_out.items():  # Sequential(Conv2d(64, 256, 3), act, Conv2d(256, out, 1)[, ReLU])
        shapes[f"{name}.0.weight"], shapes[f"{name}.0.bias"] = (256, 64, 3, 3), (256,)
        shapes[f"{name}.2.weight"], shapes[f"{name}.2.bias"] = (out, 256, 1, 1), (out,)
    track_in = 256 if lite else 130  # Lite: Linear(256, 256); V2: Linear(64 + 64 + 2, 256)
    shapes["tracking.0.weight"], shapes["tracking.0.bias"] = (256, track_in), (256,)
    shapes["tracking.2.weight"], shapes["tracking.2.bias"] = (2, 256), (2,)
    if not lite:  # ida_up_tracking = ModuleList([Sequential(Linear(256, 64), ReLU)] * 2)
        for n in range(2):
            shapes[f"ida_up_tracking.{n}.0.weight"], shapes[f"ida_up_tracking.{n}.0.bias"] = (64, 256), (64,)
    return shapes


def official_state_dict(**kw) -> dict[str, torch.Tensor]:
    """Random tensors (each distinct) under the official names and shapes."""
    g = torch.Generator().manual_seed(0)
    return {k: torch.tensor(7) if not s else torch.randn(s, generator=g) for k, s in official_shapes(**kw).items()}


# The conversion, as the README states it: official prefix -> vistra prefix; decoder layer modules -> track_decoder.
PREFIXES = {"transformer.pvt_encoder.": "backbone.model.", "transformer.input_proj.": "input_proj."}
LAYER_MODULES = {"cross_attn": "cross_attn", "norm1": "norm1", "pre_linear1": "linear1", "pre_linear2": "linear2",
                 "pre_norm3": "norm2"}
PER_LEVEL = ("sampling_offsets", "attention_weights")  # Lite: sized for one level


def expected_names(official: dict, lite: bool) -> dict[str, str]:
    """{official key: vistra key} for every tensor that converts."""
    out = {}
    for key in official:
        for old, new in PREFIXES.items():
            if key.startswith(old):
                out[key] = new + key.removeprefix(old)
        parts = key.split(".")
        if key.startswith("transformer.decoder.layers.") and parts[4] in LAYER_MODULES:
            if not (lite and parts[5] in PER_LEVEL):
                out[key] = ".".join(["track_decoder", parts[3], LAYER_MODULES[parts[4]], *parts[5:]])
    return out


def _model(name: str = "transcenter_pvt_v2_b0", **kw):
    torch.manual_seed(0)
    return vistra.create_model(name, **kw)


@pytest.mark.parametrize("lite", [False, True], ids=["v2", "lite"])
def test_converted_tensors_land_in_place_and_the_report_lists_exactly_the_rest(lite):
    official = official_state_dict(lite=lite, **TINY)
    model = _model(**TINY_MODEL, dim_feedforward=512 if lite else 1024)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_pretrained(model, {"model": official}, strict=False)

    names = expected_names(official, lite)
    state = model.state_dict()
    assert report.format == "transcenter_official" and report.loaded == len(names)
    for old, new in names.items():
        torch.testing.assert_close(state[new], official[old], rtol=0, atol=0)
    assert report.dropped == [k for k in official if k not in names]  # every official key without a counterpart
    assert not report.unexpected and not report.mismatched
    assert set(report.missing) == set(state) - set(names.values())
    for key in report.missing:  # left exactly as initialised
        torch.testing.assert_close(state[key], before[key], rtol=0, atol=0)
    fresh = {k.split(".")[0] for k in report.missing}
    assert fresh == {"level_embed", "det_decoder", "det_fuse", "track_fuse", "hm", "wh", "reg", "tracking"} | (
        {"track_decoder"} if lite else set())


def test_dropped_modules_are_the_ones_without_a_counterpart():
    report = load_pretrained(_model(**TINY_MODEL), official_state_dict(**TINY), strict=False)
    dropped = {k.rsplit(".", 1)[0] for k in report.dropped}
    assert "transformer.decoder.layers.1.self_attn" in dropped and "transformer.decoder.layers.1.norm2" in dropped
    assert {"transformer.linear1", "transformer.linear2", "transformer.norm2", "hm.0", "wh.2", "ct_offset.0",
            "tracking.0", "ida_up_tracking.1.0", "ida_up.node_0.conv", "ida_up.node_3.actf.0"} <= dropped
    lite = load_pretrained(_model(**TINY_MODEL, dim_feedforward=512), official_state_dict(lite=True, **TINY),
                           strict=False)
    assert {"transformer.decoder.layers.0.cross_attn.sampling_offsets.weight", "ct_offset_reg_wh.2.bias",
            "transformer.decoder.layers.1.cross_attn.attention_weights.bias"} <= set(lite.dropped)
    assert "transformer.decoder.layers.0.cross_attn.value_proj.weight" not in lite.dropped


def test_detection_of_the_format():
    v2, lite = official_state_dict(**TINY), official_state_dict(lite=True, **TINY)
    assert detect_transcenter_format(v2) == detect_transcenter_format(lite) == "transcenter_official"
    assert detect_format(v2) == detect_format(lite) == "transcenter_official"
    ours = _model(**TINY_MODEL).state_dict()
    assert detect_transcenter_format(ours) is None and detect_format(ours) == "unknown"
    pvt = {k.removeprefix("transformer.pvt_encoder."): v for k, v in v2.items() if "pvt_encoder" in k}
    assert detect_transcenter_format(pvt) is None and detect_format(pvt) == "pvt_v2"  # their ImageNet backbone file
    ddetr = {"transformer.level_embed": torch.zeros(4, 8), "backbone.0.body.conv1.weight": torch.zeros(1),
             "transformer.encoder.layers.0.self_attn.sampling_offsets.weight": torch.zeros(1)}
    assert detect_transcenter_format(ddetr) is None and detect_format(ddetr) == "deformable_detr_official"


def test_converted_model_runs_and_strict_loading_explains_the_partial_match():
    model = _model(**TINY_MODEL)
    load_pretrained(model, official_state_dict(**TINY), strict=False)
    out = model.eval()(torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64))
    assert out["hm"].shape == (1, 1, 16, 16) and all(torch.isfinite(v).all() for v in out.values())
    with pytest.raises(CheckpointError, match="strict=False"):
        load_pretrained(_model(**TINY_MODEL), official_state_dict(**TINY))


def test_other_decoder_sizes_are_reported_as_mismatched():
    report = load_pretrained(_model(**{**TINY_MODEL, "n_points": 4}), official_state_dict(**TINY), strict=False)
    assert {k for k, _, _ in report.mismatched} == {
        f"track_decoder.{i}.cross_attn.{m}.{p}" for i in range(2) for m in PER_LEVEL for p in ("weight", "bias")}


@pytest.mark.parametrize("preset,lite,layers", [("transcenter_v2_pvt_v2_b2", False, 6),
                                                ("transcenter_lite_pvt_v2_b0", True, 4)])
def test_presets_have_the_released_decoder_sizes(preset, lite, layers):
    """The released files' sizes (dec_n_points 9, 6 / 4 layers, FFN 1024 / 512, hidden 256) fit the presets; the V2
    preset is checked on a PVTv2-b0 backbone to stay small (its PVTv2-b2 names are the same)."""
    model = _model(preset, backbone="pvt_v2_b0", impl="fast")
    report = load_pretrained(model, official_state_dict(lite=lite, dec_layers=layers, n_points=9), strict=False)
    assert not report.mismatched and not report.unexpected
    assert len(model.track_decoder) == layers and model.config.n_points == 9


def test_vistra_convert_writes_what_converts_and_names_what_stays_fresh(tmp_path, capsys):
    official = official_state_dict(dec_layers=6, n_points=4)  # transcenter_pvt_v2_b0's decoder sizes
    src, dst = tmp_path / "MOT17_official.pth", tmp_path / "mot17.safetensors"
    torch.save({"model": official, "optimizer": {"state": {}, "param_groups": []}, "epoch": 49,
                "args": argparse.Namespace(dec_n_points=4, num_decoder_layers=6)}, src)
    assert main(["convert", str(src), str(dst), "--model", "transcenter_pvt_v2_b0"]) == 0
    printed = capsys.readouterr().out
    assert "transcenter_official" in printed and "kept as initialised: level_embed, det_decoder" in printed

    model = vistra.create_model("transcenter_pvt_v2_b0", pretrained=dst)  # strict: the file holds the whole model
    state = model.state_dict()
    for old, new in expected_names(official, lite=False).items():
        torch.testing.assert_close(state[new], official[old], rtol=0, atol=0)
    with safe_open(str(dst), framework="pt") as f:
        meta = f.metadata()
    assert meta["model"] == "transcenter_pvt_v2_b0" and meta["fresh"].startswith("level_embed, det_decoder")

    assert main(["convert", str(src), str(tmp_path / "b2.safetensors"), "--model", "transcenter_pvt_v2_b2"]) != 0
    err = capsys.readouterr().err
    assert "do not fit transcenter_pvt_v2_b2" in err and "backbone.model.patch_embed1.proj.weight" in err
