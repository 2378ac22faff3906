"""The segmentation section of `vistra demo`, on a shrunken dataset and one epoch (the real run is `vistra demo`)."""
import json

import torch
from PIL import Image

from vistra.demo import DemoContext, SectionResult
from vistra.segmentation import demo_section


def test_segmentation_section_reports_miou_and_draws_predictions(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_section, "DATA", dict(demo_section.DATA, n_train=32, n_val=6))
    ctx = DemoContext(tmp_path, epochs=1)
    ctx.report.mkdir(parents=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `vistra demo` runs it
    try:
        result = demo_section.segmentation_section(ctx)
    finally:
        torch.set_num_threads(threads)
    assert isinstance(result, SectionResult) and result.name == "segmentation"
    assert result.passed is None  # epochs overridden: the target is not checked
    metrics = result.metrics
    assert metrics["epochs"] == 1 and metrics["num_train"] == 32 and metrics["num_val"] == 6
    assert 0 <= metrics["val_mIoU"] <= 100 and result.headline == f"val mIoU {metrics['val_mIoU']:.2f}%"
    assert len(metrics["val_per_class_iou"]) == 11 and metrics["parameters"] > 1e6
    figure = Image.open(ctx.report / demo_section.FIGURE)
    assert figure.width > 3 * 32 * 4 and figure.height >= 6 * 32 * 4  # 6 rows of image | truth | prediction
    assert "| val mIoU |" in result.markdown and demo_section.FIGURE in result.files
    assert json.loads((ctx.runs / "segment" / "model.json").read_text())["task"] == "segment"
