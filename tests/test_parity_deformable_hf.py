"""vistra Deformable DETR == Hugging Face DeformableDetrForObjectDetection (random weights moved across by the
converter), eval mode, on a padded batch: plain, + box refinement, + two-stage. Final and auxiliary predictions,
the two-stage encoder proposals, and the losses (transformers' own loss vs vistra's criterion) must agree."""
import pytest
import torch

pytest.importorskip("transformers")
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig  # noqa: E402

from vistra.checkpoints import detect_format, load_pretrained  # noqa: E402
from vistra.detection.criterion import build_criterion  # noqa: E402
from vistra.detection.deformable_detr import DeformableDETRConfig, build_deformable_detr  # noqa: E402
from vistra.detection.detr import pad_images  # noqa: E402

TOL = 1e-4
LOSS_TOL = 1e-5
C = 7
RESNET18 = dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512])
VARIANTS = {"plain": {}, "refine": {"with_box_refine": True},
            "two_stage": {"with_box_refine": True, "two_stage": True}}


def _randomize(model: torch.nn.Module, seed: int = 1) -> None:
    """Distinctive values everywhere (HF zero-initialises offsets, attention weights and biases, which would hide
    a wrong mapping); residual branches end with a small norm scale so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif name.endswith("running_mean"):
                t.normal_(0, 0.1, generator=g)
            elif t.ndim == 1 and name.endswith("weight"):
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.75)
            elif t.ndim == 1:
                t.normal_(0, 0.05, generator=g)
            elif t.ndim == 2 and "embeddings" not in name:
                t.normal_(0, t.shape[1] ** -0.5, generator=g)
        for block in model.model.backbone.modules():
            if hasattr(block, "shortcut") and hasattr(block, "layer"):
                norm = block.layer[-1].normalization
                norm.weight.copy_(torch.rand(norm.weight.shape, generator=g) * 0.2 + 0.1)


def _hf(variant: dict, d: int = 64, heads: int = 4, enc: int = 2, dec: int = 3, ffn: int = 128, queries: int = 30):
    config = DeformableDetrConfig(
        backbone_config=ResNetConfig(out_features=["stage2", "stage3", "stage4"], **RESNET18), d_model=d,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_layers=enc, decoder_layers=dec,
        encoder_ffn_dim=ffn, decoder_ffn_dim=ffn, num_queries=queries, two_stage_num_proposals=queries,
        num_labels=C, auxiliary_loss=True, class_cost=2, **variant)
    model = DeformableDetrForObjectDetection(config).eval()
    _randomize(model)
    ours = dict(backbone="resnet18", hidden_dim=d, nheads=heads, enc_layers=enc, dec_layers=dec,
                dim_feedforward=ffn, num_queries=queries, num_classes=C, **variant)
    return model, ours


def _port(hf: torch.nn.Module, impl: str = "auto", **config) -> torch.nn.Module:
    sd = hf.state_dict()
    assert detect_format(sd) == "deformable_detr_hf"
    ours = build_deformable_detr(DeformableDETRConfig(deform_attn_impl=impl, **config)).eval()
    report = load_pretrained(ours, sd)
    assert report.ok and report.loaded == len(ours.state_dict())
    return ours


def _targets() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    out = []
    for n in (3, 1):
        cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        out.append({"labels": torch.randint(0, C, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})
    return out


def _as_vistra_outputs(ref, two_stage: bool) -> dict:
    """transformers' predictions in vistra's output layout, so both criteria score the very same numbers."""
    out = {"pred_logits": ref.logits, "pred_boxes": ref.pred_boxes,
           "aux_outputs": [{"pred_logits": a["logits"], "pred_boxes": a["pred_boxes"]} for a in ref.auxiliary_outputs]}
    if two_stage:
        out["enc_outputs"] = {"pred_logits": ref.enc_outputs_class,
                              "pred_boxes": ref.enc_outputs_coord_logits.sigmoid()}
    return out


def _compare(hf, ours, two_stage: bool, relative_losses: bool = False) -> dict[str, float]:
    """Max |diff| of every output and loss; relative_losses: loss diffs divided by max(1, |loss|) (the full-size
    focal losses are sums of 27,300 terms, about 50-300, where one float32 ulp is already above 1e-5).

    "loss:" compares the two criteria on transformers' predictions (held to LOSS_TOL); "end_to_end_loss:" scores
    each model's own predictions, so it also carries their float differences (up to ~1e-6 per logit, summed over
    every query and class by the focal loss) and is held to TOL."""
    torch.manual_seed(0)
    images = [torch.randn(3, 96, 128), torch.randn(3, 128, 80)]  # padded together to 128 x 128
    batch, mask = pad_images(images)
    targets = _targets()
    hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    with torch.no_grad():
        ref = hf(pixel_values=batch, pixel_mask=(~mask).long(), labels=hf_targets)  # HF: 1 = valid pixel
        out = ours(images)
    assert ref.logits.std() > 0.3 and (ref.pred_boxes[0] - ref.pred_boxes[1]).abs().max() > 0.02  # meaningful
    diffs = {"logits": (ref.logits - out["pred_logits"]).abs().max().item(),
             "boxes": (ref.pred_boxes - out["pred_boxes"]).abs().max().item()}
    assert len(out["aux_outputs"]) == len(ref.auxiliary_outputs)
    for i, (a, b) in enumerate(zip(ref.auxiliary_outputs, out["aux_outputs"])):
        diffs[f"aux{i}_logits"] = (a["logits"] - b["pred_logits"]).abs().max().item()
        diffs[f"aux{i}_boxes"] = (a["pred_boxes"] - b["pred_boxes"]).abs().max().item()
    if two_stage:
        valid = torch.isfinite(ref.enc_outputs_coord_logits)  # +inf marks padded / border proposals in both
        diffs["enc_logits"] = (ref.enc_outputs_class - out["enc_outputs"]["pred_logits"]).abs().max().item()
        diffs["enc_boxes"] = (ref.enc_outputs_coord_logits.sigmoid() - out["enc_outputs"]["pred_boxes"]).abs().max().item()
        assert (~valid).any() and valid.any()
    criterion = build_criterion(C, deformable=True, aux_layers=len(out["aux_outputs"]), two_stage=two_stage,
                                cls_loss_coef=1.0)  # transformers weighs loss_ce by 1
    same_predictions = criterion(_as_vistra_outputs(ref, two_stage), targets)
    end_to_end = criterion(out, targets)
    for name, value in ref.loss_dict.items():
        scale = max(1.0, abs(float(value))) if relative_losses else 1.0
        diffs[f"loss:{name}"] = (same_predictions[name] - value).abs().item() / scale
        diffs[f"end_to_end_loss:{name}"] = (end_to_end[name] - value).abs().item() / scale
    print({k: f"{v:.1e}" for k, v in diffs.items()})
    return diffs


def _check(diffs: dict[str, float]) -> None:
    bad = {k: v for k, v in diffs.items() if v > (LOSS_TOL if k.startswith("loss:") else TOL)}
    assert not bad, bad


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parity_with_transformers(name):
    hf, ours = _hf(VARIANTS[name])
    _check(_compare(hf, _port(hf, **ours), two_stage=name == "two_stage"))


@pytest.mark.parametrize("impl", ["reference", "fast"])
def test_parity_with_every_attention_impl(impl):
    hf, ours = _hf(VARIANTS["refine"], enc=1, dec=2)
    _check(_compare(hf, _port(hf, impl=impl, **ours), two_stage=False))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_parity_full_size_transformer(name):
    """The paper's transformer (d 256, 8 heads, 6 + 6 layers, FFN 1024, 300 queries) on a ResNet-50."""
    config = DeformableDetrConfig(
        backbone_config=ResNetConfig(out_features=["stage2", "stage3", "stage4"]), num_labels=C,
        auxiliary_loss=True, class_cost=2, **VARIANTS[name])
    hf = DeformableDetrForObjectDetection(config).eval()
    _randomize(hf)
    ours = _port(hf, backbone="resnet50", num_classes=C, **VARIANTS[name])
    _check(_compare(hf, ours, two_stage=name == "two_stage", relative_losses=True))
