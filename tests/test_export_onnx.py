"""ONNX export: every model family against onnxruntime (within 1e-4) at the export size and at another size and
batch, the deformable-attention reference path with symbolic level shapes, size fallbacks, and `vistra export`.

Deformable DETR, the segmenter and the tracker take a minute or two each on a small CPU (torch.export's symbolic
shape reasoning): they are marked slow (`make test-slow`), as is DETR's padding-mask input."""
from __future__ import annotations

import re
import sys

import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vistra
import vistra.classification.presets  # noqa: F401  (registers vit_digits)
from vistra.backbones.vit import VisionTransformer, ViTConfig
from vistra.cli import main
from vistra.detection.deformable_transformer import encoder_reference_points, valid_ratio
from vistra.export import check_onnx, example_inputs, export_onnx, wrap_for_export
from vistra.export.wrappers import ExportWrapper
from vistra.layers.deform_attn import MSDeformAttn

TOL = 1e-4
TINY_PVT = {"backbone": "pvt_v2_b0", "backbone_kwargs": {"depths": [1, 1, 1, 1]}}
TINY_DEFORMABLE = dict(hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2, dim_feedforward=64, num_queries=8,
                       num_classes=4, enc_n_points=2, dec_n_points=2, **TINY_PVT)


def _tiny_vit() -> VisionTransformer:
    return VisionTransformer(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5))


def _export_and_check(model: nn.Module, tmp_path, size: tuple[int, int], other: tuple[int, int], with_mask=False):
    """Export at `size` (batch 1), check there and at `other` with batch 3; returns the OnnxExport."""
    torch.manual_seed(0)
    wrapper = wrap_for_export(model, with_mask)
    result = export_onnx(wrapper, tmp_path / "model.onnx", example_inputs(wrapper, size))
    assert result.dynamic_batch and result.dynamic_size, result.note
    for shape, batch in ((size, 1), (other, 3)):
        diff = check_onnx(result.path, wrapper, example_inputs(wrapper, shape, batch))
        assert diff < TOL, (shape, batch, diff)
    return result


def test_classifier_matches_onnxruntime_at_any_size_and_batch(tmp_path):
    model = _tiny_vit()  # grid 4x4 at 32 px: other sizes resize the position embedding inside the graph
    result = _export_and_check(model, tmp_path, (32, 32), (48, 64))
    assert result.input_names == ("images",) and result.output_names == ("logits",)
    assert result.size_multiple == 8 and result.path.is_file()
    assert not result.path.with_name("model.onnx.data").exists()  # small models are one file
    assert model.training, "export_onnx restores the train / eval mode it found"


class _LevelsProbe(ExportWrapper):
    """Two levels (a map and its 2x pooled copy), queries on every pixel of both: the level shapes, their split and
    the reference points all come from the input size."""

    output_names = ("out",)

    def __init__(self):
        super().__init__(nn.Conv2d(3, 16, 1), size_multiple=8, coarsest_stride=2)
        self.attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2, impl="native")
        nn.init.normal_(self.attn.sampling_offsets.weight, std=0.5)  # sample off the grid, and outside it

    def forward(self, images):
        fine = self.model(images)  # (B, 16, H, W)
        maps = [fine, F.avg_pool2d(fine, 2)]  # (B, 16, H, W), (B, 16, H/2, W/2)
        shapes = [tuple(m.shape[-2:]) for m in maps]
        tokens = torch.cat([m.flatten(2).transpose(1, 2) for m in maps], 1)  # (B, S, 16)
        masks = [torch.zeros(m.shape[0], *m.shape[-2:], dtype=torch.bool) for m in maps]
        ratios = torch.stack([valid_ratio(m) for m in masks], 1)  # (B, 2, 2)
        refs = encoder_reference_points(shapes, ratios)  # (B, S, 2, 2)
        return (self.attn(tokens, refs, tokens, shapes),)  # (B, S, 16)


def test_deformable_attention_exports_on_the_reference_path_with_symbolic_level_shapes(tmp_path):
    probe = _LevelsProbe().eval()
    result = export_onnx(probe, tmp_path / "attn.onnx", example_inputs(probe, (16, 24)))
    assert result.dynamic_size, result.note
    assert probe.attn.impl == "native", "the module's own setting comes back after the export"
    for size, batch in (((16, 24), 1), ((32, 40), 2)):
        probe.attn.impl = "reference"  # what the graph runs; the C kernel may not build everywhere
        assert check_onnx(result.path, probe, example_inputs(probe, size, batch)) < TOL


class _FixedWidth(ExportWrapper):
    """A model that only works at its example's width (a Linear over the image's columns)."""

    output_names = ("out",)

    def __init__(self):
        super().__init__(nn.Linear(32, 4), size_multiple=32, coarsest_stride=1)

    def forward(self, images):
        return (self.model(images.mean(1)),)  # (B, H, 4)


def test_a_size_the_model_fixes_is_fixed_in_the_export_and_said_so(tmp_path):
    model = _FixedWidth()
    result = export_onnx(model, tmp_path / "fixed.onnx", example_inputs(model, (32, 32)))
    assert result.dynamic_batch and not result.dynamic_size
    assert result.note.startswith("image size fixed at 32x32")
    assert check_onnx(result.path, model, example_inputs(model, (32, 32), batch=3)) < TOL
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        check_onnx(result.path, model, example_inputs(model, (64, 64)))


def test_static_export_and_argument_errors(tmp_path):
    model = _tiny_vit()
    wrapper = wrap_for_export(model)
    with pytest.raises(ValueError, match="opset 12"):
        export_onnx(model, tmp_path / "m.onnx", example_inputs(wrapper, (32, 32)), opset=12)
    with pytest.raises(ValueError, match="takes 1 inputs"):
        export_onnx(model, tmp_path / "m.onnx", example_inputs(wrapper, (32, 32)) * 2)
    with pytest.raises(ValueError, match="padding-mask input is for detectors"):
        wrap_for_export(model, with_mask=True)
    with pytest.raises(ValueError, match="cannot export"):
        wrap_for_export(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not a multiple of 8"):
        example_inputs(wrapper, (30, 32))


# ------------------------------------------------------------------------------------------------ CLI
def _saved_classifier(folder):
    from vistra.classification.model_file import ClassifierInfo, save_classifier

    kwargs = {"num_classes": 3, "img_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}
    torch.manual_seed(0)
    model = vistra.create_model("vit_digits", **kwargs)  # patch 4
    save_classifier(model, folder, ClassifierInfo("vit_digits", ["a", "b", "c"], kwargs, img_size=16))
    return folder


def test_cli_exports_a_trained_classifier_and_checks_it(tmp_path, capsys):
    run = _saved_classifier(tmp_path / "run")
    out = tmp_path / "cls.onnx"
    assert main(["export", str(run), str(out), "--format", "onnx"]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "exported vit_digits" in text and "images (B, 3, H, W); B any, H, W any multiples of 4" in text
    diffs = re.findall(r"at (\d+x\d+): max \|diff\| (\S+)", text)
    assert [d[0] for d in diffs] == ["16x16", "20x24"], text  # the example and a second size
    assert all(float(d[1]) < TOL for d in diffs), text
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_cli_says_what_to_install_when_onnxruntime_is_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert main(["export", "vit_tiny_patch16_224", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vistra: error: vistra export needs onnxruntime") and "pip install vistra[export]" in err
    assert not (tmp_path / "m.onnx").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "no_such_model", str(tmp_path / "m.onnx")]) == 2
    assert "neither a checkpoint file / run folder nor a registered model name" in capsys.readouterr().err
    assert main(["export", "vit_tiny_patch16_224", str(tmp_path / "m.onnx"), "--format", "tflite"]) == 2


# ------------------------------------------------------------------------ detection, segmentation, tracking
@pytest.mark.parametrize("with_mask", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["images", "images+mask"])
def test_detr_matches_onnxruntime(tmp_path, with_mask):
    torch.manual_seed(0)
    model = vistra.create_model("detr", backbone="resnet18", hidden_dim=32, nheads=2, enc_layers=1, dec_layers=2,
                                dim_feedforward=64, num_queries=8, num_classes=4)
    result = _export_and_check(model, tmp_path, (64, 96), (96, 160), with_mask)
    assert result.input_names == (("images", "mask") if with_mask else ("images",))
    assert result.output_names == ("pred_logits", "pred_boxes")
    if with_mask:  # a padded batch: the mask reaches the attention masks and the positions
        wrapper = wrap_for_export(model, True)
        images, mask = example_inputs(wrapper, (96, 128), batch=2)
        mask[0, 64:], mask[1, :, 96:] = True, True
        assert check_onnx(result.path, wrapper, (images, mask)) < TOL


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{}, {"with_box_refine": True, "two_stage": True}], ids=["plain", "two_stage"])
def test_deformable_detr_matches_onnxruntime(tmp_path, variant):
    torch.manual_seed(0)
    model = vistra.create_model("deformable_detr", **TINY_DEFORMABLE, **variant)  # impl "auto": native / fast
    _export_and_check(model, tmp_path, (128, 128), (160, 224))


@pytest.mark.slow
def test_transcenter_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = vistra.create_model("transcenter_pvt_v2_b0", d_model=32, n_heads=4, n_points=2, dec_layers=1,
                                dim_feedforward=64, head_channels=16, backbone_kwargs={"depths": [1, 1, 1, 1]})
    result = _export_and_check(model, tmp_path, (64, 96), (96, 160))
    assert result.input_names == ("images", "prev_images")
    assert result.output_names == ("hm", "wh", "reg", "tracking")


@pytest.mark.slow
def test_segmenter_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    model = vistra.create_model("semfpn_pvt_v2_b0", num_classes=5, backbone_kwargs={"depths": [1, 1, 1, 1]})
    _export_and_check(model, tmp_path, (64, 96), (96, 160))
