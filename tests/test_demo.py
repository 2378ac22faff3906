"""`vistra demo`: the report folder, the summary table built from section headlines, and the exit status.

Every section's target itself is checked by the demo's exit status (`make demo`) and by the slow test.
"""
import json
import os
import time
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
    assert main(["demo", "--out", str(tmp_path), "--jobs", "1"]) == 1
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
    assert main(["demo", "--out", str(tmp_path), "--only", "gamma", "--jobs", "1"]) == 2
    assert "unknown demo section(s) gamma; known: alpha, beta" in capsys.readouterr().err


# Sections for the parallel runs below: module-level, so that the processes running them can import them.
def _base_section(ctx: DemoContext) -> SectionResult:
    time.sleep(1.0)
    ctx.runs.mkdir(parents=True, exist_ok=True)
    (ctx.runs / "base.txt").write_text(str(os.getpid()))
    return SectionResult("base", "made base", {"pid": os.getpid()}, "none", True, "## base\n")


def _child_section(ctx: DemoContext) -> SectionResult:
    made_by = (ctx.runs / "base.txt").read_text()  # fails unless base has finished
    return SectionResult("child", f"used base of {made_by}", {"pid": os.getpid()}, "none", True, "## child\n")


def _other_section(ctx: DemoContext) -> SectionResult:
    time.sleep(0.5)
    return SectionResult("other", "other", {"pid": os.getpid(), "threads": torch.get_num_threads()}, "none", None,
                         "## other\n")


def _broken_section(ctx: DemoContext) -> SectionResult:
    raise RuntimeError("section broke")


def test_sections_run_in_parallel_processes_after_the_sections_they_need(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "SECTIONS", [("child", _child_section), ("other", _other_section),
                                           ("base", _base_section)])
    monkeypatch.setattr(demo, "NEEDS", {"child": "base"})
    metrics = run_demo(tmp_path / "two", jobs=2, threads=1)
    assert list(metrics["headlines"]) == ["child", "other", "base"]  # reported in SECTIONS order
    pids = {name: m["pid"] for name, m in metrics["sections"].items()}
    assert os.getpid() not in pids.values() and pids["base"] != pids["other"]  # two processes at once
    assert metrics["headlines"]["child"] == f"used base of {pids['base']}"
    assert metrics["sections"]["other"]["threads"] == 1 and metrics["jobs"] == 2
    assert "(2 sections at a time)" in (tmp_path / "two" / "report" / "report.md").read_text()
    # one at a time, in-process: the needed section still runs first; --only brings in what a section needs
    metrics = run_demo(tmp_path / "one", only=["child"], jobs=1)
    assert list(metrics["headlines"]) == ["child", "base"]
    assert metrics["sections"]["base"]["pid"] == os.getpid()
    monkeypatch.setattr(demo, "SECTIONS", [("other", _other_section), ("broken", _broken_section)])
    with pytest.raises(RuntimeError, match="section broke"):
        run_demo(tmp_path / "broken", jobs=2)


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
def test_full_demo_meets_every_target(tmp_path):
    """What `make demo` runs: every section, two at a time, each meets its target."""
    metrics = run_demo(tmp_path / "demo", jobs=2)
    assert metrics["sections"]["classification"]["val_top1"] >= 97.0
    assert {name: t["passed"] for name, t in metrics["targets"].items()} == {name: True for name, _ in demo.SECTIONS}
