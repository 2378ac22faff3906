"""`vistra bench`: runs the installed benchmarks end to end, prints their tables, writes their results, and works
without timm / transformers (vistra timed alone, with a note)."""
import json
import sys

import pytest
import torch

from vistra import create_model
from vistra.bench import BENCHMARKS, backbones, detection
from vistra.bench.common import count_flops
from vistra.cli import main


def test_bench_quick_runs_two_benchmarks_prints_their_tables_and_writes_results(tmp_path, capsys):
    assert main(["bench", "--quick", "segmentation", "tracking", "--threads", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== segmentation: " in out and "== tracking: " in out
    assert "| model (128x128, batch 1) | params (M) | GFLOP/img | img/s |" in out
    assert "| tiny 64x96 |" in out
    segmentation = json.loads((tmp_path / "segmentation.json").read_text())
    assert segmentation["settings"]["quick"] and segmentation["machine"]["threads"] == 1
    assert segmentation["rows"][0]["img_s"] > 0
    tracking = json.loads((tmp_path / "tracking.json").read_text())
    assert tracking["rows"][0]["fps"] > 0 and tracking["machine"]["device"] == "cpu"


def test_bench_refuses_unknown_names_and_unavailable_devices_before_running_anything(tmp_path, capsys):
    assert main(["bench", "segmentation", "nonsense", "--out", str(tmp_path)]) == 2
    assert "unknown benchmark(s) nonsense; choose from " + ", ".join(BENCHMARKS) in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--quick", "segmentation", "--device", "cuda", "--out", str(tmp_path)]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_backbones_without_timm_times_vistra_alone_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    result = backbones.run(["--quick", "--models", "pvt_v2_b0", "--threads", "1", "--quiet", "--no-save",
                            "--same-process"])  # the patched import holds in this process only
    (row,) = result["rows"]
    assert row["vistra_img_s"] > 0 and row["timm_img_s"] is None and row["ratio"] is None
    assert result["table"].splitlines()[2].startswith("| pvt_v2_b0 | 1 |") and "| n/a | n/a |" in result["table"]
    assert result["notes"] == [backbones.NO_TIMM] and backbones.NO_TIMM in backbones.summary(result)


def test_backbones_time_each_model_in_a_fresh_process_against_timm():
    pytest.importorskip("timm")
    result = backbones.run(["--quick", "--models", "vit_small_patch16_224", "pvt_v2_b0", "--threads", "1",
                            "--quiet", "--no-save"])
    assert result["settings"]["process_per_model"]
    assert [r["model"] for r in result["rows"]] == ["vit_small_patch16_224", "pvt_v2_b0"]
    for r in result["rows"]:
        assert r["vistra_img_s"] > 0 and r["timm_img_s"] > 0 and r["max_abs_diff"] < 1e-4
        model, x = create_model(r["model"]).eval(), torch.randn(1, 3, 224, 224)
        assert r["gflops_per_img"] == count_flops(lambda: model(x)) / 1e9


def test_detection_without_transformers_times_vistra_alone_with_a_note(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    result = detection.run(["--quick", "--size", "64", "96", "--batches", "1", "--rounds", "1", "--threads", "1",
                            "--matcher", "2", "10", "4", "--quiet", "--no-save"])
    assert [r["kind"] for r in result["rows"]] == ["inference", "train_step", "matcher"]
    assert all(r["vistra_s"] > 0 and r["transformers_s"] is None and r["speedup"] is None for r in result["rows"])
    assert result["machine"]["transformers"] is None and result["notes"] == [detection.NO_TRANSFORMERS]
    assert result["table"].splitlines()[2] == (
        f"| inference 64x96, batch 1 | {detection._fmt(result['rows'][0]['vistra_s'])} | n/a | n/a |  |")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bench_quick_on_cuda(tmp_path, capsys):
    assert main(["bench", "--quick", "segmentation", "backbones", "--device", "cuda", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "backbones.json").read_text())
    assert result["machine"]["device"] == "cuda" and result["machine"]["gpu"]
    assert all(r["vistra_img_s"] > 0 for r in result["rows"])


def test_count_flops_counts_linear_convolution_and_attention():
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 14, 8)
    attention = 2 * (2 * 2 * 3 * 10 * 14 * 8)  # q @ k^T and weights @ v, 2 FLOPs per multiply-accumulate
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k)) == attention
    x, w = torch.randn(5, 6), torch.randn(7, 6)
    assert count_flops(lambda: torch.nn.functional.linear(x, w)) == 2 * 5 * 6 * 7
    vit = create_model("vit_tiny_patch16_224", num_classes=10).eval()
    tokens, dim, depth = 197, 192, 12  # the last block runs its query, projection and MLP for the class token only
    per_block = 2 * tokens * dim * (3 * dim + dim + 2 * 4 * dim) + 2 * 2 * tokens * tokens * dim
    last_block_for_cls = 2 * tokens * dim * 2 * dim + 2 * 2 * tokens * dim + 2 * dim * (dim + dim + 8 * dim)  # k, v
    patches = 2 * 196 * dim * 3 * 16 * 16
    expected = (depth - 1) * per_block + last_block_for_cls + patches + 2 * dim * 10
    assert count_flops(lambda: vit(torch.randn(1, 3, 224, 224))) == expected
