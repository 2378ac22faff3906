"""The detection section of `vistra demo`, on a tiny dataset and model (its plumbing, not its AP)."""
import json

import torch
from PIL import Image

from vistra.demo import DemoContext
from vistra.detection import demo_section


def test_detection_section_trains_scores_and_draws(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_section, "DEMO_DATA", {"n_train": 8, "n_val": 3, "canvas": (64, 96),
                                                    "digit_size": (16, 32), "max_digits": 3})
    tiny = {"model.hidden_dim": 32, "model.nheads": 2, "model.enc_layers": 1, "model.dec_layers": 1,
            "model.dim_feedforward": 64, "scales": [64], "max_size": 96, "eval_size": 64, "eval_max_size": 96,
            "batch_size": 4, "progress": False}
    monkeypatch.setattr(demo_section, "DEMO_SETTINGS", {**demo_section.DEMO_SETTINGS, **tiny})
    ctx = DemoContext(tmp_path, epochs=1)
    ctx.report.mkdir(parents=True)
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
