"""Deformable DETR model: presets, the official argument names, output contract of every variant, padding,
training (every trainable parameter learns, the loss falls), the recipe's learning-rate groups, save / load."""
import pytest
import torch

import vistra
from vistra.detection import build_criterion
from vistra.detection.deformable_detr import LR_MULTIPLIERS, DeformableDETR
from vistra.engine import build_param_groups

TINY = dict(backbone="resnet18", hidden_dim=64, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=8, num_classes=4, enc_n_points=2, dec_n_points=2)
VARIANTS = {"plain": {}, "single_scale": {"num_feature_levels": 1}, "refine": {"with_box_refine": True},
            "two_stage": {"with_box_refine": True, "two_stage": True}, "two_stage_shared": {"two_stage": True}}


def _tiny(**kw) -> DeformableDETR:
    torch.manual_seed(0)
    return vistra.create_model("deformable_detr", **{**TINY, **kw})


def _targets():
    return [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]])},
            {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]


def test_presets_are_registered():
    names = vistra.list_models("deformable_detr*")
    for name in ["deformable_detr", "deformable_detr_resnet50", "deformable_detr_resnet50_single_scale",
                 "deformable_detr_resnet50_refine", "deformable_detr_resnet50_two_stage",
                 *[f"deformable_detr_pvt_v2_b{i}" for i in range(6)]]:
        assert name in names


def test_official_arguments_build_the_model():
    model = vistra.create_model("deformable_detr", backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=2,
                                dec_layers=3, dim_feedforward=128, dropout=0.1, num_queries=10, num_classes=91,
                                dilation=False, position_embedding="sine", aux_loss=True, num_feature_levels=4,
                                enc_n_points=4, dec_n_points=4, with_box_refine=False, two_stage=False,
                                lr_backbone=2e-5)
    assert model.arch == "deformable_detr" and model.config.dec_layers == 3 and model.config.num_classes == 91
    assert model.query_embed.weight.shape == (10, 128)
    assert len(model.input_proj) == 4 and isinstance(model.input_proj[3][1], torch.nn.GroupNorm)
    assert model.transformer.encoder.layers[0].self_attn.sampling_offsets.out_features == 4 * 4 * 4 * 2
    assert model.class_embed[0].out_features == 91 and len(model.class_embed) == 1  # shared head, stored once
    frozen = vistra.create_model("deformable_detr", **{**TINY, "lr_backbone": 0})
    assert not any(p.requires_grad for p in frozen.backbone.parameters())


@pytest.mark.parametrize("name", list(VARIANTS))
def test_forward_contract(name):
    model = _tiny(**VARIANTS[name]).eval()
    images = [torch.randn(3, 64, 96), torch.randn(3, 80, 64)]
    with torch.no_grad():
        out = model(images)
    assert out["pred_logits"].shape == (2, 8, 4) and out["pred_boxes"].shape == (2, 8, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    assert len(out["aux_outputs"]) == 1 and out["aux_outputs"][0]["pred_boxes"].shape == (2, 8, 4)
    assert ("enc_outputs" in out) == ("two_stage" in name)
    if "enc_outputs" in out:
        assert out["enc_outputs"]["pred_logits"].shape[:2] == out["enc_outputs"]["pred_boxes"].shape[:2]
    heads = model.config.dec_layers + model.two_stage if model.with_box_refine else 1
    assert len(model.class_embed) == len(model.bbox_embed) == heads


def test_padding_does_not_change_an_image_s_predictions():
    """An image alone and the same image padded next to a larger one give the same predictions (masks work)."""
    model = _tiny(enc_layers=1, dec_layers=1, aux_loss=False).eval()
    small, large = torch.randn(3, 64, 64), torch.randn(3, 96, 128)
    with torch.no_grad():
        alone = model([small])
        padded = model([small, large])
    # the backbone's convolutions see the zero padding at the border; the transformer itself is mask-exact
    assert (alone["pred_boxes"][0] - padded["pred_boxes"][0]).abs().max() < 0.05
    with torch.no_grad():
        batch = torch.stack([small, small])
        same = model(batch, torch.zeros(2, 64, 64, dtype=torch.bool))
    torch.testing.assert_close(same["pred_logits"][0], alone["pred_logits"][0], atol=1e-5, rtol=0)


def test_attention_impls_give_the_same_model_outputs():
    model = _tiny(with_box_refine=True).eval()
    images = [torch.randn(3, 64, 96), torch.randn(3, 80, 64)]
    with torch.no_grad():
        auto = model(images)
        model.set_deform_attn_impl("reference")
        ref = model(images)
    torch.testing.assert_close(auto["pred_boxes"], ref["pred_boxes"], atol=1e-5, rtol=0)
    torch.testing.assert_close(auto["pred_logits"], ref["pred_logits"], atol=1e-5, rtol=0)


def test_training_every_parameter_learns_and_the_loss_falls():
    """Refinement + two-stage. At step 0 some gradients are zero by the official initialisation (zero last box
    layer, zero offset / attention-weight matrices hide the position input), so every parameter must have
    received a gradient by the end."""
    model = _tiny(**VARIANTS["two_stage"], dropout=0.0).train()
    criterion = build_criterion(model)
    images = [torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    targets = _targets()
    groups = build_param_groups(model, 1e-4, model.lr_multipliers())
    for g in groups:
        g["lr"] = 1e-3 * g["lr_scale"]
    opt = torch.optim.AdamW(groups)
    losses, learned = [], set()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors this small gain nothing from threads; on a busy machine they cost 10x
    try:
        for _ in range(10):
            out = model(images)
            loss = criterion(out, targets)["loss"]
            opt.zero_grad()
            loss.backward()
            learned |= {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
            opt.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    silent = [n for n, p in model.named_parameters() if p.requires_grad and n not in learned]
    assert not silent, silent
    assert losses[-1] < 0.8 * losses[0], losses


def test_learning_rate_groups_of_the_official_recipe():
    model = _tiny()
    groups = build_param_groups(model, 1e-4, LR_MULTIPLIERS)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        slow = n.startswith("backbone.") or "sampling_offsets" in n or "reference_points" in n
        assert scale_of[id(p)] == (0.1 if slow else 1.0), n
    from vistra.detection.recipe import is_focal

    assert is_focal(model)


def test_save_and_load_round_trip(tmp_path):
    from vistra.checkpoints import save_checkpoint

    model = _tiny(with_box_refine=True, two_stage=True).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", model_name="deformable_detr")
    again = vistra.create_model("deformable_detr", pretrained=path, **{**TINY, "with_box_refine": True,
                                                                       "two_stage": True}).eval()
    images = [torch.randn(3, 64, 64)]
    with torch.no_grad():
        torch.testing.assert_close(again(images)["pred_boxes"], model(images)["pred_boxes"])


def test_pvt_v2_detector():
    torch.manual_seed(0)
    model = vistra.create_model("deformable_detr_pvt_v2_b0", **{k: v for k, v in TINY.items() if k != "backbone"})
    assert model.backbone.strides == [8, 16, 32] and model.backbone.num_channels == [64, 160, 256]
    out = model(torch.randn(1, 3, 64, 64))
    out["pred_boxes"].sum().backward()
    assert model.backbone.body.patch_embed1.proj.weight.grad is not None


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="multiple of 32"):
        _tiny(hidden_dim=80)
    with pytest.raises(ValueError, match="two_stage_num_proposals"):
        _tiny(two_stage=True, two_stage_num_proposals=5)
    model = _tiny(two_stage=True, num_queries=300).eval()
    with pytest.raises(ValueError, match="fewer than the 300 proposals"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="impl"):
        _tiny(deform_attn_impl="cuda")
