"""Deformable DETR checkpoints: official fundamentalvision files (dict with "model" and a pickled argparse
Namespace; shared heads listed once per layer, refinement heads listed twice), Hugging Face safetensors folders,
`vistra convert`, and clear errors for files that do not fit."""
import argparse

import pytest
import torch

import vistra
from vistra.checkpoints import CheckpointError, detect_format, load_pretrained
from vistra.checkpoints.convert_deformable_detr import dedupe_heads, detect_deformable_detr_format

TINY = dict(backbone="resnet18", hidden_dim=64, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64,
            num_queries=8, num_classes=4, enc_n_points=2, dec_n_points=2)


def _model(**kw):
    torch.manual_seed(0)
    model = vistra.create_model("deformable_detr", **{**TINY, **kw}).eval()
    with torch.no_grad():  # non-trivial heads and offsets, so that a wrong mapping shows
        for n, p in model.named_parameters():
            if "embed" in n or "sampling_offsets" in n or "attention_weights" in n:
                p.normal_(0, 0.05)
    return model


def _as_official(model) -> dict[str, torch.Tensor]:
    """vistra names -> the official main.py's state dict, with its duplicated head entries."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("backbone.body."):
            k = "backbone.0.body." + k.removeprefix("backbone.body.")
        sd[k] = v.clone()
    n_pred = model.config.dec_layers + model.two_stage
    for family in ("class_embed", "bbox_embed"):
        heads = {k: v for k, v in sd.items() if k.startswith(family + ".")}
        if not model.with_box_refine:  # the same module listed once per prediction
            for i in range(1, n_pred):
                sd.update({k.replace(f"{family}.0.", f"{family}.{i}.", 1): v for k, v in heads.items()})
        if model.with_box_refine and (family == "bbox_embed" or model.two_stage):
            sd.update({f"transformer.decoder.{k}": v for k, v in heads.items()})
    return sd


def _same_predictions(a, b):
    images = [torch.randn(3, 64, 96), torch.randn(3, 80, 64)]
    with torch.no_grad():
        out_a, out_b = a(images), b(images)
    torch.testing.assert_close(out_a["pred_logits"], out_b["pred_logits"])
    torch.testing.assert_close(out_a["pred_boxes"], out_b["pred_boxes"])


@pytest.mark.parametrize("variant", [{}, {"with_box_refine": True}, {"with_box_refine": True, "two_stage": True},
                                     {"two_stage": True}])
def test_official_checkpoint_file_loads(tmp_path, variant):
    model = _model(**variant)
    official = _as_official(model)
    assert detect_format(official) == "deformable_detr_official"
    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(lr=2e-4, with_box_refine=variant.get("with_box_refine", False))
    torch.save({"model": official, "optimizer": {}, "epoch": 49, "args": args}, path)
    loaded = vistra.create_model("deformable_detr", pretrained=path, **{**TINY, **variant}).eval()
    _same_predictions(model, loaded)


def test_shared_heads_are_kept_once_and_refinement_copies_dropped():
    head = {"class_embed.0.weight": torch.ones(2, 2), "bbox_embed.0.layers.0.weight": torch.ones(2, 2)}
    shared = {**head, "class_embed.1.weight": torch.ones(2, 2), "bbox_embed.1.layers.0.weight": torch.ones(2, 2)}
    dropped = []
    assert set(dedupe_heads(shared, dropped)) == set(head) and len(dropped) == 2
    refined = {**shared, "bbox_embed.1.layers.0.weight": torch.zeros(2, 2),
               "transformer.decoder.bbox_embed.0.layers.0.weight": torch.ones(2, 2)}
    out = dedupe_heads(refined)
    assert "bbox_embed.1.layers.0.weight" in out and not any(k.startswith("transformer.") for k in out)


def test_hugging_face_folder_loads(tmp_path):
    transformers = pytest.importorskip("transformers")
    resnet = transformers.ResNetConfig(out_features=["stage2", "stage3", "stage4"], layer_type="basic",
                                       depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512])
    config = transformers.DeformableDetrConfig(
        backbone_config=resnet, d_model=64, encoder_attention_heads=2, decoder_attention_heads=2, encoder_layers=1,
        decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=8, num_labels=4, encoder_n_points=2,
        decoder_n_points=2, with_box_refine=True)
    torch.manual_seed(0)
    hf = transformers.DeformableDetrForObjectDetection(config).eval()
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if "embed" in n or "sampling_offsets" in n:
                p.normal_(0, 0.05)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    ours = vistra.create_model("deformable_detr", pretrained=tmp_path, **{**TINY, "with_box_refine": True}).eval()
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = hf(pixel_values=image)
        out = ours(image)
    assert (ref.logits - out["pred_logits"]).abs().max() < 1e-4
    assert (ref.pred_boxes - out["pred_boxes"]).abs().max() < 1e-4


def test_vistra_convert_writes_a_loadable_file(tmp_path, capsys):
    from vistra.cli_convert import run_convert

    model = _model(with_box_refine=True)
    src = tmp_path / "official.pth"
    torch.save({"model": _as_official(model)}, src)
    dst = tmp_path / "converted.safetensors"
    report = run_convert(src, dst, "deformable_detr", **{**TINY, "with_box_refine": True})
    assert report.ok and report.format == "deformable_detr_official"
    assert "deformable_detr_official" in capsys.readouterr().out
    again = vistra.create_model("deformable_detr", pretrained=dst, **{**TINY, "with_box_refine": True}).eval()
    _same_predictions(model, again)


def test_files_that_do_not_fit_are_refused_clearly(tmp_path):
    refine = _as_official(_model(with_box_refine=True))
    plain = _model()
    with pytest.raises(CheckpointError, match="unexpected key.*class_embed.1"):
        load_pretrained(plain, refine)
    detr = vistra.create_model("detr", backbone="resnet18", hidden_dim=64, nheads=2, enc_layers=1, dec_layers=1,
                               dim_feedforward=64, num_queries=8, num_classes=4)
    with pytest.raises(CheckpointError, match="detr"):
        load_pretrained(plain, {"model": {("backbone.0.body." + k.removeprefix("backbone.body.")
                                           if k.startswith("backbone.body.") else k): v
                                          for k, v in detr.state_dict().items()}})
    assert detect_deformable_detr_format(plain.state_dict()) is None  # vistra's own names load as they are
