"""DETR, the model half: ResNet backbone, 2-D position encodings, transformer, presets, inputs, checkpoint names."""
import math

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBatchNorm2d

import vistra
import vistra.detection.detr  # noqa: F401  (registers the DETR and ResNet presets until the registry imports it)
from vistra.backbones.resnet import FrozenBatchNorm2d
from vistra.checkpoints.convert_detr import convert_detr_official, convert_detr_state_dict, detect_detr_format
from vistra.detection.detr import DETRConfig, build_detr, pad_images
from vistra.layers.position2d import PositionEmbeddingLearned2d, PositionEmbeddingSine2d, sine_position_2d

TINY = dict(hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=128, num_queries=10)


def _tiny_detr(**kw) -> torch.nn.Module:
    return vistra.create_model("detr", **{"backbone": "resnet18", **TINY, **kw})


def _randomize_norms(sd: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if "bn" in k or "downsample.1" in k:
            if k.endswith("running_var"):
                v = torch.rand(v.shape, generator=g) + 0.5
            elif k.endswith(("weight", "bias", "running_mean")):
                v = torch.randn(v.shape, generator=g) * 0.1 + (1.0 if k.endswith("weight") else 0.0)
        out[k] = v
    return out


# ---------------------------------------------------------------- ResNet

@pytest.mark.parametrize("name,norm,dc5", [("resnet18", "frozen", False), ("resnet50", "batch", False),
                                           ("resnet50", "frozen", True)])
def test_resnet_loads_torchvision_weights_and_matches(name, norm, dc5):
    tv_norm = TVFrozenBatchNorm2d if norm == "frozen" else None
    tv = getattr(torchvision.models, name)(norm_layer=tv_norm, replace_stride_with_dilation=[False, False, dc5])
    sd = _randomize_norms(getattr(torchvision.models, name)().state_dict())  # with num_batches_tracked
    ours = vistra.create_model(name, norm_layer=norm, replace_stride_with_dilation=[False, False, dc5]).eval()
    ours.load_state_dict(sd, strict=True)
    tv.load_state_dict(sd, strict=norm == "batch")
    tv.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref, out = tv(x), ours(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_resnet_pyramid_strides_and_dc5():
    x = torch.randn(1, 3, 64, 96)
    for dc5, strides in [(False, [4, 8, 16, 32]), (True, [4, 8, 16, 16])]:
        model = vistra.create_model("resnet50", features_only=True, replace_stride_with_dilation=[False, False, dc5])
        assert model.strides == strides and model.channels == [256, 512, 1024, 2048]
        maps = model(x)
        assert [m.shape[-2:] for m in maps] == [(64 // s, 96 // s) for s in strides]
    small = vistra.create_model("resnet18", features_only=True, out_indices=(3,))
    assert small.channels == [512] and small(x)[0].shape == (1, 512, 2, 3)


def test_resnet_parameter_counts():
    counts = {"resnet18": 11.689512, "resnet34": 21.797672, "resnet50": 25.557032, "resnet101": 44.549160}
    for name, millions in counts.items():  # torchvision's exact counts
        with torch.device("meta"):
            model = vistra.create_model(name)
        assert sum(p.numel() for p in model.parameters()) == round(millions * 1e6)


def test_frozen_batchnorm_is_eval_batchnorm_with_buffers_only():
    bn = torch.nn.BatchNorm2d(8).eval()
    sd = _randomize_norms({f"bn.{k}": v for k, v in bn.state_dict().items()})
    bn.load_state_dict({k[3:]: v for k, v in sd.items()})
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # num_batches_tracked is dropped
    assert not list(frozen.parameters()) and frozen.eps == 1e-5
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(frozen(x), bn(x))


# ---------------------------------------------------------------- position encodings

def _official_sine_loop(mask: torch.Tensor, F: int, offset: float) -> torch.Tensor:
    """The official formula written out pixel by pixel in float64: position = count of unpadded pixels up to and
    including this one along the axis, normalised by the count along the whole axis, times 2 pi."""
    B, H, W = mask.shape
    out = torch.zeros(B, 2 * F, H, W, dtype=torch.float64)
    valid = (~mask).double()
    for b in range(B):
        for y in range(H):
            for x in range(W):
                ye = valid[b, : y + 1, x].sum().item()
                xe = valid[b, y, : x + 1].sum().item()
                ye = (ye + offset) / (valid[b, :, x].sum().item() + 1e-6) * 2 * math.pi
                xe = (xe + offset) / (valid[b, y, :].sum().item() + 1e-6) * 2 * math.pi
                for i in range(F):
                    dim_t = 10000 ** (2 * (i // 2) / F)
                    fn = math.sin if i % 2 == 0 else math.cos
                    out[b, i, y, x] = fn(ye / dim_t)
                    out[b, F + i, y, x] = fn(xe / dim_t)
    return out


@pytest.mark.parametrize("offset", [0.0, -0.5])  # DETR; Deformable DETR
def test_sine_encoding_matches_official_formula(offset):
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, 3:, :] = True
    mask[1, :, 4:] = True
    pos = PositionEmbeddingSine2d(num_pos_feats=8, offset=offset)(mask)
    assert pos.shape == (2, 16, 5, 7) and pos.dtype == torch.float32
    ref = _official_sine_loop(mask, 8, offset)
    if offset:  # under the mask the -0.5 offset divides by eps: huge angles whose sine float32 cannot reproduce
        pos, ref = pos.permute(0, 2, 3, 1)[~mask], ref.permute(0, 2, 3, 1)[~mask]  # (valid pixels, 16)
    torch.testing.assert_close(pos.double(), ref, atol=2e-5, rtol=0)


def test_sine_encoding_of_valid_pixels_ignores_padding():
    alone = sine_position_2d(torch.zeros(1, 4, 6, dtype=torch.bool), 16)
    mask = torch.ones(1, 9, 10, dtype=torch.bool)
    mask[:, :4, :6] = False
    padded = sine_position_2d(mask, 16)
    torch.testing.assert_close(padded[..., :4, :6], alone)


def test_learned_encoding_layout_and_limit():
    pe = PositionEmbeddingLearned2d(num_pos_feats=4)
    assert {n for n, _ in pe.named_parameters()} == {"row_embed.weight", "col_embed.weight"}
    pos = pe(torch.zeros(2, 3, 5, dtype=torch.bool))
    assert pos.shape == (2, 8, 3, 5)
    torch.testing.assert_close(pos[1, :4, 2, 4], pe.col_embed.weight[4])  # x first, as the official code
    torch.testing.assert_close(pos[0, 4:, 2, 4], pe.row_embed.weight[2])
    with pytest.raises(ValueError, match="at most 50x50"):
        pe(torch.zeros(1, 51, 5, dtype=torch.bool))


# ---------------------------------------------------------------- presets

PRESETS = ["detr_resnet50", "detr_resnet101", "detr_resnet50_dc5", "detr_resnet101_dc5", "detr_vit_small_patch16",
           "detr_pvt_v2_b2"]


def _outputs_sum(out: dict) -> torch.Tensor:
    total = out["pred_logits"].logsumexp(-1).sum() + out["pred_boxes"].sum()
    for aux in out.get("aux_outputs", []):
        total = total + aux["pred_logits"].logsumexp(-1).sum() + aux["pred_boxes"].sum()
    return total


@pytest.mark.parametrize("name", PRESETS)
def test_preset_forward_backward(name):
    model = vistra.create_model(name, enc_layers=1, dec_layers=2, num_classes=5).train()
    out = model([torch.rand(3, 64, 64), torch.rand(3, 48, 64)])
    assert out["pred_logits"].shape == (2, 100, 6) and out["pred_boxes"].shape == (2, 100, 4)
    assert ((out["pred_boxes"] >= 0) & (out["pred_boxes"] <= 1)).all()
    assert len(out["aux_outputs"]) == 1 and out["aux_outputs"][0]["pred_boxes"].shape == (2, 100, 4)
    _outputs_sum(out).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    if "resnet" in name:  # the official code trains layer2..4 only
        assert frozen and all(n.startswith(("backbone.body.conv1", "backbone.body.layer1.")) for n in frozen)
    else:
        assert not frozen
    assert any(n.startswith("backbone.body.") for n in trainable)
    assert all(not n.startswith("backbone.") or n.startswith("backbone.body.") for n in trainable)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRESETS)
def test_preset_full_size_forward(name):
    model = vistra.create_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 160))
    assert out["pred_logits"].shape == (1, 100, 92) and len(out["aux_outputs"]) == 5


def test_preset_structure():
    with torch.device("meta"):
        r50, dc5 = vistra.create_model("detr_resnet50"), vistra.create_model("detr_resnet50_dc5")
        vit, pvt = vistra.create_model("detr_vit_small_patch16"), vistra.create_model("detr_pvt_v2_b2")
    for model in (r50, dc5):
        assert len(model.transformer.encoder.layers) == 6 and len(model.transformer.decoder.layers) == 6
        assert model.query_embed.weight.shape == (100, 256) and model.class_embed.out_features == 92
    assert r50.backbone.strides == [32] and dc5.backbone.strides == [16]
    assert vit.backbone.strides == [16] and vit.backbone.num_channels == [384]
    assert pvt.backbone.strides == [32] and pvt.backbone.num_channels == [512]
    count = sum(p.numel() for p in r50.parameters()) / 1e6
    assert abs(count - 41.3) < 0.5  # the paper's 41M (41.52M with the 92-way head)


def test_generic_builder_takes_official_arguments():
    model = vistra.create_model("detr", backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2, dec_layers=2,
                                dim_feedforward=128, dropout=0.1, num_queries=10, num_classes=91, dilation=False,
                                position_embedding="sine", aux_loss=True).eval()
    assert model.arch == "detr" and isinstance(model.config, DETRConfig) and model.config.hidden_dim == 64
    out = model(torch.rand(1, 3, 64, 64))
    assert out["pred_logits"].shape == (1, 10, 92) and len(out["aux_outputs"]) == 1
    no_aux = _tiny_detr(aux_loss=False).eval()
    assert "aux_outputs" not in no_aux(torch.rand(1, 3, 64, 64))
    frozen = _tiny_detr(lr_backbone=0)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    pre = _tiny_detr(pre_norm=True, position_embedding="learned")
    names = set(pre.state_dict())
    assert "transformer.encoder.norm.weight" in names and "backbone.position_embedding.row_embed.weight" in names
    assert pre(torch.rand(1, 3, 64, 64))["pred_boxes"].shape == (1, 10, 4)
    with pytest.raises(ValueError, match="ResNet"):
        vistra.create_model("detr_vit_small_patch16", dilation=True)


def test_official_module_names():
    names = set(_tiny_detr(enc_layers=1, dec_layers=1).state_dict())
    for key in ["transformer.encoder.layers.0.self_attn.in_proj_weight", "transformer.encoder.layers.0.self_attn."
                "in_proj_bias", "transformer.encoder.layers.0.self_attn.out_proj.weight",
                "transformer.encoder.layers.0.linear1.weight", "transformer.encoder.layers.0.norm2.bias",
                "transformer.decoder.layers.0.multihead_attn.in_proj_weight",
                "transformer.decoder.layers.0.norm3.weight", "transformer.decoder.norm.weight", "query_embed.weight",
                "class_embed.weight", "bbox_embed.layers.2.bias",
                "input_proj.weight", "backbone.body.layer4.1.bn2.running_var", "backbone.body.conv1.weight"]:
        assert key in names, key
    assert not any(".fc." in n or n.startswith("backbone.body.fc") for n in names)


def test_pretrained_backbone_loads_torchvision_weights(tmp_path):
    pytest.importorskip("vistra.checkpoints.convert")
    sd = _randomize_norms(torchvision.models.resnet18().state_dict())  # with fc and num_batches_tracked
    torch.save(sd, tmp_path / "resnet18.pth")
    model = _tiny_detr(pretrained_backbone=str(tmp_path / "resnet18.pth"))
    body = model.backbone.body.state_dict()
    assert all(torch.equal(body[k], v) for k, v in sd.items() if k in body)
    assert torch.equal(body["layer4.1.bn2.running_var"], sd["layer4.1.bn2.running_var"])


def test_backbone_lr_group():
    optim = pytest.importorskip("vistra.engine.optim")
    model = _tiny_detr()
    groups = optim.build_param_groups(model, 1e-4, {"backbone.*": 0.1})
    scaled = sum(len(g["params"]) for g in groups if g["lr_scale"] == 0.1)
    assert scaled == sum(1 for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone."))


# ---------------------------------------------------------------- inputs, masks, padding

def test_list_input_equals_padded_batch_with_mask():
    model = _tiny_detr().eval()
    images = [torch.rand(3, 50, 70), torch.rand(3, 64, 40)]
    batch, mask = pad_images(images)
    assert batch.shape == (2, 3, 64, 70) and mask[0, 50:].all() and not mask[0, :50, :70].any()
    assert mask[1, :, 40:].all() and not mask[1, :, :40].any()
    with torch.no_grad():
        a, b = model(images), model(batch, mask)
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], rtol=0, atol=1e-6)
    torch.testing.assert_close(a["aux_outputs"][0]["pred_boxes"], b["aux_outputs"][0]["pred_boxes"], rtol=0, atol=1e-6)


def test_no_mask_equals_all_false_mask():
    model = _tiny_detr().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), model(x, torch.zeros(2, 64, 64, dtype=torch.bool))
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], rtol=0, atol=1e-5)


def test_transformer_ignores_padded_positions():
    """What holds exactly: given the same features on the valid region, whatever lies under the mask (and however
    much of it) does not change the outputs: the encoder, the decoder's cross-attention and the sine encoding all
    honour the mask. The full model is NOT padding invariant (nor is the official one): the backbone's convolutions
    near the bottom / right border see padding instead of zeros, see the next test."""
    model = _tiny_detr().eval()
    feat = torch.randn(1, 512, 3, 4)
    padded = torch.randn(1, 512, 5, 7) * 10  # garbage under the mask
    padded[..., :3, :4] = feat
    mask = torch.ones(1, 5, 7, dtype=torch.bool)
    mask[:, :3, :4] = False
    pe = model.backbone.position_embedding
    with torch.no_grad():
        alone = model.decode(feat, None, pe(torch.zeros(1, 3, 4, dtype=torch.bool)))
        inside = model.decode(padded, mask, pe(mask))
    torch.testing.assert_close(inside, alone, rtol=0, atol=1e-5)


def test_padding_changes_only_the_padded_image():
    """The largest image of a batch has no padding: its outputs are those it has alone. A padded image's outputs
    move (the backbone sees the padding), which is why we assert nothing tighter for it."""
    model = _tiny_detr().eval()
    big, small = torch.rand(3, 64, 96), torch.rand(3, 40, 64)
    with torch.no_grad():
        batch = model([big, small])
        alone_big, alone_small = model(big[None]), model(small[None])
    torch.testing.assert_close(batch["pred_logits"][0], alone_big["pred_logits"][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(batch["pred_boxes"][0], alone_big["pred_boxes"][0], rtol=0, atol=1e-5)
    assert (batch["pred_logits"][1] - alone_small["pred_logits"][0]).abs().max() > 1e-4


def test_vit_detector_pads_to_the_patch_size():
    model = vistra.create_model("detr_vit_small_patch16", enc_layers=1, dec_layers=1, num_queries=5).eval()
    assert model.backbone.size_divisibility == 16
    with torch.no_grad():
        out = model([torch.rand(3, 50, 70), torch.rand(3, 64, 40)])  # -> 64 x 80, a 4 x 5 patch map
        single = model(torch.rand(1, 3, 50, 70))
    assert out["pred_logits"].shape == (2, 5, 92) and single["pred_boxes"].shape == (1, 5, 4)


def test_input_errors():
    model = _tiny_detr()
    with pytest.raises(ValueError, match="mask"):
        model([torch.rand(3, 32, 32)], torch.zeros(1, 32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask shape"):
        model(torch.rand(1, 3, 32, 32), torch.zeros(1, 16, 32, dtype=torch.bool))


def test_dropout_only_in_training():
    model = _tiny_detr().eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["pred_logits"], model(x)["pred_logits"])
        model.train()
        assert not torch.equal(model(x)["pred_logits"], model(x)["pred_logits"])


@pytest.mark.slow
def test_torch_export_matches_eager():
    model = _tiny_detr().eval()
    x = torch.rand(1, 3, 64, 96)
    mask = torch.zeros(1, 64, 96, dtype=torch.bool)
    mask[..., 80:] = True
    exported = torch.export.export(model, (x, mask))
    out, ref = exported.module()(x, mask), model(x, mask)
    torch.testing.assert_close(out["pred_logits"], ref["pred_logits"])


# ---------------------------------------------------------------- official checkpoint names

def _to_official(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        k = k.replace("backbone.body.", "backbone.0.body.").replace("backbone.position_embedding.", "backbone.1.")
        out[k] = v
        if k.endswith("running_var"):
            out[k.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    return out


@pytest.mark.parametrize("position", ["sine", "learned"])
def test_official_checkpoint_converts_and_loads(position):
    model = _tiny_detr(position_embedding=position).eval()
    ours = model.state_dict()
    official = _to_official(ours)
    assert "backbone.0.body.layer1.0.conv1.weight" in official
    assert detect_detr_format(official) == "detr_official"
    converted = convert_detr_state_dict(official)
    assert converted.keys() == ours.keys()
    fresh = build_detr(model.config).eval()
    fresh.load_state_dict(converted, strict=True)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)["pred_logits"], model(x)["pred_logits"])
    assert detect_detr_format(ours) is None and convert_detr_state_dict(ours).keys() == ours.keys()
    panoptic = {"detr." + k: v for k, v in official.items()}
    assert convert_detr_official(panoptic).keys() == ours.keys()


def test_deformable_checkpoints_are_not_taken_for_detr():
    sd = {"backbone.0.body.conv1.weight": torch.zeros(1), "transformer.level_embed": torch.zeros(1),
          "transformer.encoder.layers.0.self_attn.sampling_offsets.weight": torch.zeros(1),
          "query_embed.weight": torch.zeros(1)}
    assert detect_detr_format(sd) is None


def test_resnet_training_gradients_match_torchvision():
    """DETR's backbone in training (frozen norms, layer1 frozen, channels_last with its own backward routes) has
    torchvision's gradients; in float64, where rounding cannot hide a wrong route."""
    sd = _randomize_norms(torchvision.models.resnet50().state_dict())
    tv = torchvision.models.resnet50(norm_layer=TVFrozenBatchNorm2d)
    tv.load_state_dict(sd, strict=False)
    ours = vistra.create_model("resnet50", norm_layer="frozen")
    ours.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 70, 90, dtype=torch.float64)
    for model in (tv.double(), ours.double()):
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(("layer2", "layer3", "layer4")))
        model(x).square().mean().backward()
    theirs = dict(tv.named_parameters())
    for name, p in ours.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, theirs[name].grad, rtol=1e-9, atol=1e-12, msg=name)
