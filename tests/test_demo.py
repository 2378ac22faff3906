"""`vistra demo`: the report folder, the summary table built from section headlines, and the exit status.

The >= 97% digits target itself is checked by the demo's exit status (`make demo`) and by the slow test.
"""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vistra import demo
from vistra.cli import main
from vistra.demo import DemoContext, SectionResult, report_markdown, run_demo, summary_line


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fake(name: str, passed, headline: str):
    def section(ctx: DemoContext) -> SectionResult:
        (ctx.report / f"{name}.png").write_bytes(b"png")
        return SectionResult(name=name, headline=headline, metrics={"score": 1.0}, target="score >= 1",
                             passed=passed, markdown=f"## {name}\n", files=[f"{name}.png"])

    return section


def test_classification_section_one_epoch_writes_report(tmp_path, capsys, monkeypatch):
    from vistra.classification.presets import DIGITS_RECIPE

    # the demo's own recipe, with a narrower ViT so that one epoch takes seconds
    monkeypatch.setitem(DIGITS_RECIPE["model"], "kwargs", {"embed_dim": 24, "depth": 2, "num_heads": 2})
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--only", "classification"]) == 0
    printed = capsys.readouterr().out
    report = out / "report"
    metrics = json.loads((report / "metrics.json").read_text())
    section = metrics["sections"]["classification"]
    assert section["epochs"] == 1 and section["num_train"] + section["num_val"] == 1797
    assert 0 <= section["val_top1"] <= 100 and section["val_errors"] == round(
        section["num_val"] * (1 - section["val_top1"] / 100))
    assert metrics["headlines"]["classification"] == f"val top-1 {section['val_top1']:.2f}%"
    assert metrics["targets"]["classification"] == {"target": "val top-1 >= 97%", "passed": None}  # 1 epoch
    assert metrics["total_time_s"] >= metrics["times_s"]["classification"] > 0

    text = (report / "report.md").read_text()
    assert f"| classification | val top-1 {section['val_top1']:.2f}% | val top-1 >= 97% | not checked |" in text
    for name in ("curves.png", "predictions.png", "attention.png"):
        assert f"({name})" in text
        with Image.open(report / name) as png:
            assert png.format == "PNG" and min(png.size) >= 100
    assert f"vistra demo: classification val top-1 {section['val_top1']:.2f}%" in printed

    weights = Path(section["run_dir"]) / "model.safetensors"  # the trained model answers `vistra predict`
    image = sorted((out / "data" / "digits-cls" / "val" / "3").iterdir())[0]
    assert main(["predict", str(image), "--checkpoint", str(weights), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / f"{image.stem}_attention.png").is_file()


def test_headlines_fill_the_table_and_a_missed_target_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "SECTIONS", [("alpha", _fake("alpha", True, "mIoU 71.0%")),
                                           ("beta", _fake("beta", False, "AP 12.5"))])
    assert main(["demo", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "alpha mIoU 71.0% (score >= 1: target met); beta AP 12.5 (score >= 1: TARGET MISSED)" in captured.out
    assert captured.err.strip() == "vistra: demo missed its target in beta (score >= 1)"
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| alpha | mIoU 71.0% | score >= 1 | yes |" in text and "| beta | AP 12.5 | score >= 1 | NO |" in text
    assert text.index("## alpha") < text.index("## beta")
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["headlines"] == {"alpha": "mIoU 71.0%", "beta": "AP 12.5"}
    assert metrics["targets"]["beta"]["passed"] is False

    assert run_demo(tmp_path / "only", only=["alpha"])["headlines"] == {"alpha": "mIoU 71.0%"}
    assert main(["demo", "--out", str(tmp_path), "--only", "gamma"]) == 2
    assert "unknown demo section(s) gamma; known: alpha, beta" in capsys.readouterr().err


def test_summary_line_and_markdown_are_built_from_results():
    results = [SectionResult("a", "val top-1 98.00%", {}, "val top-1 >= 97%", True, "## a\n", time_s=61.0),
               SectionResult("b", "AP 1.0", {}, "AP >= 0", None, "## b\n")]
    line = summary_line(results, 120.0, Path("out/report"))
    assert line == ("vistra demo: a val top-1 98.00% (val top-1 >= 97%: target met); b AP 1.0 (AP >= 0: target "
                    "not checked); 2.0 min; report in out/report")
    table = report_markdown(results, 120.0)
    assert "| a | val top-1 98.00% | val top-1 >= 97% | yes | 61 s |" in table
    assert "| b | AP 1.0 | AP >= 0 | not checked | 0 s |" in table


@pytest.mark.slow
def test_full_demo_reaches_target(tmp_path):
    metrics = run_demo(tmp_path / "demo", only=["classification"])
    assert metrics["sections"]["classification"]["val_top1"] >= 97.0
    assert metrics["targets"]["classification"]["passed"] is True
