"""The traffic-tracking section of `vistra demo` on tiny data and a tiny model (its plumbing, not its HOTA): it
starts from the tracking section's model, trains a per-class tracker and reports per-class HOTA."""
import json

import pytest
import torch
from PIL import Image

import vistra
from vistra.demo import DemoContext
from vistra.tracking import demo_section, traffic_demo_section
from vistra.trained import read_trained, save_trained

TINY = {"d_model": 32, "n_heads": 4, "n_points": 2, "dec_layers": 1, "dim_feedforward": 64, "head_channels": 16}


def test_traffic_section_fine_tunes_the_tracking_model_and_scores_each_class(tmp_path, monkeypatch):
    monkeypatch.setattr(traffic_demo_section, "DATA", {"n_train": 2, "n_val": 1, "length": 8, "size": (96, 72),
                                                       "digit_size": (16, 22), "max_objects": 4, "dontcare": 1.0,
                                                       "seed": 1})
    settings = {k: v for k, v in demo_section.SETTINGS.items() if not k.startswith("model.")}
    monkeypatch.setattr(demo_section, "SETTINGS", {**settings, **{f"model.{k}": v for k, v in TINY.items()},
                                                   "scales": [72], "max_size": 96, "eval_size": 72,
                                                   "eval_max_size": 96, "batch_size": 4})
    ctx = DemoContext(tmp_path, epochs=1)
    ctx.report.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="tracking section's model is needed"):
        traffic_demo_section.traffic_section(ctx)
    torch.manual_seed(0)
    one_class = vistra.create_model("transcenter_pvt_v2_b0", num_classes=1, **TINY)
    save_trained(one_class, ctx.runs / "track", {"task": "track", "model_name": "transcenter_pvt_v2_b0"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = traffic_demo_section.traffic_section(ctx)
    finally:
        torch.set_num_threads(threads)

    assert result.name == "traffic" and result.passed is None  # epochs overridden: target not checked
    m = result.metrics
    json.dumps(m)  # metrics.json material
    assert m["classes"] == ["Car", "Pedestrian", "Cyclist"]  # the classes with boxes in training
    assert list(m["per_class"]) == [c for c in m["classes"] if c in m["per_class"]] and len(m["per_class"]) >= 2
    for name, scores in m["per_class"].items():
        assert 0 <= scores["HOTA"] <= 100 and scores["gt_boxes"] > 0 and f"| {name} | {scores['HOTA']} |" in \
            result.markdown
    assert result.headline.startswith(f"val HOTA {m['val_HOTA']}% class-averaged (")
    report = json.loads((ctx.runs / "traffic" / "val" / "track_metrics.json").read_text())
    assert report["format"] == "kitti" and set(m["per_class"]) <= set(report["classes"])
    _, info, _ = read_trained(ctx.runs / "traffic")
    assert info["init_weights"]["file"] == str(ctx.runs / "track" / "model.safetensors")
    assert all(f.startswith("hm.") for f in info["init_weights"]["fresh"])
    with Image.open(ctx.report / "traffic.png") as png:
        assert png.format == "PNG" and png.width > png.height
