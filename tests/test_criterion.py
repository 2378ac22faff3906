"""SetCriterion (DETR / Deformable DETR losses) and postprocess: parity with transformers, training, edge cases."""
from types import SimpleNamespace

import pytest
import torch

from vistra.detection.criterion import SetCriterion, build_criterion
from vistra.detection.matcher import HungarianMatcher
from vistra.detection.postprocess import postprocess

C = 6  # object classes
LOSSES = ["labels", "boxes", "cardinality"]


def _head(B, Q, cols, grad=False):
    out = {"pred_logits": torch.randn(B, Q, cols), "pred_boxes": torch.rand(B, Q, 4) * 0.5 + 0.1}
    return {k: v.requires_grad_(grad) for k, v in out.items()}


def _outputs(B=3, Q=15, focal=False, aux=2, enc=False, grad=False):
    cols = C if focal else C + 1
    out = _head(B, Q, cols, grad)
    out["aux_outputs"] = [_head(B, Q, cols, grad) for _ in range(aux)]
    if enc:
        out["enc_outputs"] = _head(B, Q, cols, grad)
    return out


def _targets(sizes=(4, 0, 7)):
    return [{"labels": torch.randint(0, C, (n,)), "boxes": torch.rand(n, 4) * 0.4 + 0.1} for n in sizes]


def _to_hf(out, targets):
    hf = lambda o: {"logits": o["pred_logits"], "pred_boxes": o["pred_boxes"]}  # noqa: E731
    hf_out = hf(out)
    if out.get("aux_outputs"):
        hf_out["auxiliary_outputs"] = [hf(a) for a in out["aux_outputs"]]
    return hf_out, [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]


def _hf_criterion(focal):
    from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher, DeformableDetrImageLoss
    from transformers.loss.loss_for_object_detection import HungarianMatcher, ImageLoss

    if focal:
        return DeformableDetrImageLoss(DeformableDetrHungarianMatcher(2, 5, 2), C, focal_alpha=0.25, losses=LOSSES)
    return ImageLoss(HungarianMatcher(1, 5, 2), C, eos_coef=0.1, losses=LOSSES)


# --------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize("sizes", [(4, 0, 7), (1, 2, 3), (0, 0, 0)])
def test_every_loss_equals_transformers(focal, sizes):
    out, tgt = _outputs(focal=focal), _targets(sizes)
    ours = build_criterion(C, deformable=focal, aux_layers=2)(out, tgt)
    ref = _hf_criterion(focal)(*_to_hf(out, tgt))
    assert len(ref) == 12  # 4 names x (last layer + 2 aux)
    for name, value in ref.items():
        torch.testing.assert_close(ours[name], torch.as_tensor(value, dtype=torch.float32), atol=1e-5, rtol=1e-5,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_encoder_losses_equal_transformers_on_class_agnostic_targets():
    # transformers' loss has no two-stage branch: its loss on the encoder output against all-zero labels is the oracle
    out, tgt = _outputs(focal=True, aux=0, enc=True), _targets()
    ours = build_criterion(C, deformable=True, two_stage=True)(out, tgt)
    enc_only = {**out["enc_outputs"]}
    zero_tgt = [{**t, "labels": torch.zeros_like(t["labels"])} for t in tgt]
    ref = _hf_criterion(True)(*_to_hf(enc_only, zero_tgt))
    for name in ["loss_ce", "loss_bbox", "loss_giou", "cardinality_error"]:
        torch.testing.assert_close(ours[name + "_enc"], ref[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("focal", [False, True])
def test_total_equals_transformers_loss_function(focal):
    from transformers import DeformableDetrConfig, DetrConfig, ResNetConfig
    from transformers.loss.loss_deformable_detr import DeformableDetrForObjectDetectionLoss
    from transformers.loss.loss_for_object_detection import ForObjectDetectionLoss

    if focal:
        cfg_cls, loss_fn = DeformableDetrConfig, DeformableDetrForObjectDetectionLoss
    else:
        cfg_cls, loss_fn = DetrConfig, ForObjectDetectionLoss
    config = cfg_cls(backbone=None, use_timm_backbone=False, use_pretrained_backbone=False,
                     backbone_config=ResNetConfig(out_features=["stage4"]), num_labels=C, auxiliary_loss=True,
                     decoder_layers=3, class_cost=2 if focal else 1)
    out, tgt = _outputs(focal=focal, aux=2), _targets()
    layers = out["aux_outputs"] + [out]
    hf_loss, hf_dict, _ = loss_fn(
        out["pred_logits"], _to_hf(out, tgt)[1], "cpu", out["pred_boxes"], config,
        outputs_class=torch.stack([o["pred_logits"] for o in layers]),
        outputs_coord=torch.stack([o["pred_boxes"] for o in layers]))
    # transformers weighs Deformable DETR's loss_ce by 1; the official recipe (our default) by 2
    ours = build_criterion(C, deformable=focal, aux_layers=2, cls_loss_coef=1.0)(out, tgt)
    torch.testing.assert_close(ours["loss"], hf_loss, atol=1e-5, rtol=1e-5)
    for name, value in hf_dict.items():
        torch.testing.assert_close(ours[name], value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("focal", [False, True])
def test_parity_on_tiny_transformers_model(focal):
    """End to end: a random tiny transformers detector computes its own loss; ours on its outputs must agree."""
    from transformers import (DeformableDetrConfig, DeformableDetrForObjectDetection, DetrConfig,
                              DetrForObjectDetection, ResNetConfig)

    feats = ["stage2", "stage3", "stage4"] if focal else ["stage4"]
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 64], depths=[1, 1, 1, 1], out_features=feats)
    kw = dict(backbone=None, use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
              d_model=32, encoder_layers=1, decoder_layers=3, encoder_attention_heads=2, decoder_attention_heads=2,
              encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=12, num_labels=C, auxiliary_loss=True)
    model = (DeformableDetrForObjectDetection(DeformableDetrConfig(class_cost=2, **kw)) if focal
             else DetrForObjectDetection(DetrConfig(**kw))).eval()
    tgt = _targets((2, 1))
    with torch.no_grad():
        hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in tgt]
        hf = model(pixel_values=torch.randn(2, 3, 64, 64), labels=hf_targets)
    out = {"pred_logits": hf.logits, "pred_boxes": hf.pred_boxes,
           "aux_outputs": [{"pred_logits": a["logits"], "pred_boxes": a["pred_boxes"]} for a in hf.auxiliary_outputs]}
    ours = build_criterion(C, deformable=focal, aux_layers=2, cls_loss_coef=1.0)(out, tgt)
    torch.testing.assert_close(ours["loss"], hf.loss, atol=1e-5, rtol=1e-5)
    for name, value in hf.loss_dict.items():
        torch.testing.assert_close(ours[name], value, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("focal", [False, True])
def test_names_and_total(focal):
    out, tgt = _outputs(focal=focal, aux=2, enc=focal), _targets()
    criterion = build_criterion(C, deformable=focal, aux_layers=2, two_stage=focal)
    losses = criterion(out, tgt)
    base = ["loss_ce", "loss_bbox", "loss_giou", "cardinality_error"]
    suffixes = ["", "_0", "_1"] + (["_enc"] if focal else [])
    assert set(losses) == {b + s for b in base for s in suffixes} | {"class_error", "loss"}
    expected = sum(losses[k] * w for k, w in criterion.weight_dict.items())
    torch.testing.assert_close(losses["loss"], expected)
    assert criterion.weight_dict["loss_ce"] == (2.0 if focal else 1.0)
    assert criterion.weight_dict["loss_bbox_1"] == 5.0 and criterion.weight_dict["loss_giou_0"] == 2.0
    assert not losses["class_error"].requires_grad and not losses["cardinality_error"].requires_grad


@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize("sizes", [(0, 3, 0), (0, 0, 0)])
def test_empty_targets(focal, sizes):
    out, tgt = _outputs(focal=focal, aux=1, enc=focal, grad=True), _targets(sizes)
    losses = build_criterion(C, deformable=focal, aux_layers=1, two_stage=focal)(out, tgt)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert torch.isfinite(out["pred_logits"].grad).all()
    if sum(sizes) == 0:
        assert losses["loss_bbox"] == 0 and losses["loss_giou"] == 0
        assert out["pred_logits"].grad.abs().sum() > 0  # every query is still pushed towards "no object"


def test_perfect_predictions():
    """Predictions equal to the targets: zero box losses, zero class error, exact cardinality."""
    tgt = _targets((3, 2))
    logits = torch.full((2, 5, C + 1), -10.0)
    logits[..., C] = 10.0  # no object
    boxes = torch.full((2, 5, 4), 0.5)
    for i, t in enumerate(tgt):
        n = len(t["labels"])
        logits[i, torch.arange(n), t["labels"]] = 20.0
        boxes[i, :n] = t["boxes"]
    losses = build_criterion(C, deformable=False, aux_layers=0)({"pred_logits": logits, "pred_boxes": boxes}, tgt)
    assert losses["class_error"] == 0 and losses["cardinality_error"] == 0
    assert losses["loss_bbox"] < 1e-6 and losses["loss_giou"] < 1e-6 and losses["loss_ce"] < 1e-4


@pytest.fixture
def one_thread():
    # 200 steps on (2, 10, 7) tensors: OpenMP regions only add overhead, and on a busy 2-core machine each
    # parallel softmax can wait milliseconds for a descheduled thread (27 s vs 4 s for this test, measured)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("focal", [False, True])
def test_losses_fall_when_fitting_free_predictions(focal, one_thread):
    torch.manual_seed(0)
    tgt = _targets((3, 5))
    cols = C if focal else C + 1
    logits = torch.zeros(2, 10, cols, requires_grad=True)
    box_params = torch.randn(2, 10, 4, requires_grad=True)  # boxes = sigmoid(params), as the DETR heads
    criterion = build_criterion(C, deformable=focal, aux_layers=0)
    opt = torch.optim.Adam([logits, box_params], lr=0.05)
    history = []
    for _ in range(200):  # converges in ~100 steps; 200 leaves margin
        losses = criterion({"pred_logits": logits, "pred_boxes": box_params.sigmoid()}, tgt)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert last["loss"] < 0.05 * first["loss"]
    assert last["loss_giou"] < 0.05 and last["loss_bbox"] < 0.05
    assert last["class_error"] == 0 and last["cardinality_error"] == 0


def test_num_boxes_is_averaged_over_processes(monkeypatch):
    """With torch.distributed initialised, num_boxes = all_reduce(sum) / world size, clamped at 1."""
    out, tgt = _outputs(aux=0), _targets((4, 0, 7))  # 11 boxes here
    criterion = build_criterion(C, deformable=False)
    single = criterion(out, tgt)
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(dist, "all_reduce", lambda t: t.add_(33))  # the other 3 processes hold 33 boxes
    multi = criterion(out, tgt)  # num_boxes = 44 / 4 = 11: same losses
    torch.testing.assert_close(multi["loss_bbox"], single["loss_bbox"])
    monkeypatch.setattr(dist, "all_reduce", lambda t: t.add_(11))  # num_boxes = 22 / 4 = 5.5
    multi = criterion(out, tgt)
    torch.testing.assert_close(multi["loss_bbox"], single["loss_bbox"] * 2)
    torch.testing.assert_close(multi["loss_ce"], single["loss_ce"])  # DETR's CE is a mean over queries
    monkeypatch.setattr(dist, "all_reduce", lambda t: t.zero_())  # no boxes anywhere: clamp to 1
    assert criterion(out, _targets((0, 0, 0)))["loss_bbox"] == 0


def test_errors_name_the_problem():
    out, tgt = _outputs(focal=False, aux=0), _targets()
    with pytest.raises(ValueError, match="sigmoid focal head"):
        build_criterion(C, deformable=True)(out, tgt)  # softmax logits (C + 1 columns) given to a focal criterion
    with pytest.raises(ValueError, match="num_classes \\+ 1"):
        build_criterion(C + 1, deformable=False)(out, tgt)
    with pytest.raises(ValueError, match="target labels"):
        bad = [{"labels": torch.tensor([C]), "boxes": torch.rand(1, 4) * 0.3 + 0.1}] * 3  # C means "no object"
        build_criterion(C, deformable=False)(out, bad)
    with pytest.raises(KeyError, match="aux_layers"):
        build_criterion(C, deformable=False, aux_layers=0)(_outputs(focal=False, aux=2), tgt)
    with pytest.raises(ValueError, match="matcher built with focal=False"):
        SetCriterion(C, HungarianMatcher(focal=False), {}, focal=True)
    with pytest.raises(ValueError, match="unknown losses"):
        SetCriterion(C, HungarianMatcher(), {}, losses=("labels", "masks"))


# --------------------------------------------------------------------------------------------- postprocess
def _hf_post(focal, out, sizes, threshold, top_k=100):
    from transformers import DeformableDetrImageProcessor, DetrImageProcessor

    hf_out = SimpleNamespace(logits=out["pred_logits"], pred_boxes=out["pred_boxes"])
    if focal:
        return DeformableDetrImageProcessor().post_process_object_detection(hf_out, threshold, sizes, top_k=top_k)
    return DetrImageProcessor().post_process_object_detection(hf_out, threshold, sizes)


@pytest.mark.parametrize("focal", [False, True])
@pytest.mark.parametrize("threshold", [None, 0.3])
def test_postprocess_equals_transformers(focal, threshold):
    out = _outputs(B=2, Q=30, focal=focal, aux=0)
    sizes = torch.tensor([[480, 640], [300, 200]])
    ours = postprocess(out, sizes, focal=focal, top_k=50, threshold=threshold)
    ref = _hf_post(focal, out, sizes, -1.0 if threshold is None else threshold, top_k=50)
    for o, r in zip(ours, ref):
        assert len(o["scores"]) == len(r["scores"]) == (len(r["scores"]) if threshold else (50 if focal else 30))
        torch.testing.assert_close(o["scores"], r["scores"])
        assert torch.equal(o["labels"], r["labels"])
        torch.testing.assert_close(o["boxes"], r["boxes"])


def test_postprocess_details():
    out = _outputs(B=2, Q=4, focal=True, aux=0)
    res = postprocess(out, [(10, 20), (30, 40)], focal=True, top_k=1000)  # list sizes; top_k clipped to Q*C
    assert res[0]["scores"].shape == (4 * C,) and res[1]["boxes"].shape == (4 * C, 4)
    assert torch.all(res[0]["scores"][:-1] >= res[0]["scores"][1:])
    detr = postprocess(_outputs(B=1, Q=4, aux=0), [(10, 20)])
    assert detr[0]["labels"].max() < C  # the no-object column is never a label
    with pytest.raises(ValueError, match="target_sizes"):
        postprocess(out, [(10, 20)])
