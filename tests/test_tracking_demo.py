"""The tracking section of `vistra demo`, shrunk to seconds: it trains, tracks, scores and writes its report."""
import json

from vistra.demo import DemoContext
from vistra.tracking import demo_section


def test_tracking_section_reports_trackeval_scores(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_section, "DATA", {**demo_section.DATA, "n_train": 1, "n_val": 1, "length": 12,
                                               "size": (96, 64), "digit_size": (16, 24), "max_objects": 3})
    monkeypatch.setattr(demo_section, "SETTINGS", {**demo_section.SETTINGS, "scales": [64], "eval_size": 64,
                                                   "batch_size": 4, "model.d_model": 32, "model.dec_layers": 1})
    ctx = DemoContext(tmp_path, epochs=1)
    ctx.report.mkdir(parents=True)
    result = demo_section.tracking_section(ctx)
    assert result.passed is None  # epochs overridden: a quick look, target not checked
    assert {"val_HOTA", "val_MOTA", "val_IDF1", "tracking_fps"} <= set(result.metrics)
    assert 0 <= result.metrics["val_HOTA"] <= 100 and result.headline.startswith("val HOTA")
    assert (ctx.report / demo_section.FIGURE).is_file() and "![tracked frames]" in result.markdown
    scores = json.loads((tmp_path / "runs" / "track" / "val" / "track_metrics.json").read_text())
    assert round(scores["combined"]["all"]["HOTA"] * 100, 2) == result.metrics["val_HOTA"]
