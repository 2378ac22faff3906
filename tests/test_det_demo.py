"""The detection section of `vistra demo`, on a tiny dataset and model (its plumbing, not its AP): Deformable DETR
whose backbone starts from the segmentation section's model."""
import json

import pytest
import torch
from PIL import Image

import vistra
from vistra.demo import DemoContext
from vistra.detection import demo_section
from vistra.trained import save_trained


def test_detection_section_trains_scores_and_draws(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_section, "DEMO_DATA", {"n_train": 8, "n_val": 3, "canvas": (64, 96),
                                                    "digit_size": (16, 32), "max_digits": 3})
    tiny = {"model.hidden_dim": 32, "model.nheads": 2, "model.enc_layers": 1, "model.dec_layers": 1,
            "model.dim_feedforward": 64, "scales": [64], "max_size": 96, "eval_size": 64, "eval_max_size": 96,
            "batch_size": 4, "progress": False}
    monkeypatch.setattr(demo_section, "DEMO_SETTINGS", {**demo_section.DEMO_SETTINGS, **tiny})
    ctx = DemoContext(tmp_path, epochs=1)
    ctx.report.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="segmentation section's model is needed"):
        demo_section.detection_section(ctx)
    torch.manual_seed(0)
    segmenter = vistra.create_model("semfpn_pvt_v2_digits")
    save_trained(segmenter, ctx.runs / "segment", {"task": "segment", "model_name": "semfpn_pvt_v2_digits"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = demo_section.detection_section(ctx)
    finally:
        torch.set_num_threads(threads)

    assert result.name == "detection" and result.passed is None  # epochs overridden: target not checked
    assert result.headline.startswith("val AP ") and "AP50" in result.headline
    m = result.metrics
    assert m["epochs"] == 1 and m["num_val"] == 3 and 0 <= m["val_AP"] <= 100 and m["parameters"] > 1e6
    json.dumps(m)  # metrics.json material
    for name in result.files:
        assert (ctx.report / name).is_file(), name
        assert f"({name})" in result.markdown
    sheet = Image.open(ctx.report / "det_predictions.png")
    assert sheet.height == 2 * max(Image.open(p).height for p in sorted((ctx.data / "digits-det" / "val").glob("*.png")))
    assert (ctx.runs / "detect" / "model.safetensors").is_file()
    state = vistra.trained.read_trained(ctx.runs / "detect")[0]  # the backbone came from the segmenter (lr 1e-4:
    seg = segmenter.state_dict()                                   # one small step away after one epoch)
    key = "backbone.body.patch_embed1.proj.weight"
    assert torch.allclose(state[key], seg["backbone.model.patch_embed1.proj.weight"], atol=5e-3)
    assert m["backbone_weights"] == str(ctx.runs / "segment")
