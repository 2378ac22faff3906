"""benchmarks/backbones.py runs end to end and returns / writes the documented structure (timings not checked)."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("timm")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "backbones.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("vistra_bench_backbones", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_backbones_benchmark_quick(tmp_path):
    bench = _load_module()
    out = tmp_path / "backbones.json"
    result = bench.run(["--quick", "--models", "pvt_v2_b0", "--batches", "1", "--rounds", "1", "--threads", "1",
                        "--out", str(out)])

    assert set(result) >= {"machine", "settings", "matmul", "rows", "table"}
    assert {"torch", "threads", "cpu", "date"} <= set(result["machine"])
    assert result["machine"]["threads"] == 1
    assert result["matmul"]["best_gflops"] > 0 and result["matmul"]["cases"]

    (row,) = result["rows"]
    assert (row["model"], row["batch"]) == ("pvt_v2_b0", 1)
    for key in ("vistra_img_s", "timm_img_s", "ratio", "gflops_per_img", "vistra_fraction_of_matmul"):
        assert row[key] > 0, key
    assert len(row["rounds"]) == 1
    assert row["max_abs_diff"] < 1e-3  # same weights reached both implementations (the key map worked)
    assert 0.5 < row["gflops_per_img"] < 1.5  # pvt_v2_b0 is about 1.06 GFLOPs (0.53 GMACs) at 224

    lines = result["table"].splitlines()
    assert lines[0].startswith("| model | batch | vistra img/s | timm img/s | ratio |")
    assert lines[2].startswith("| pvt_v2_b0 | 1 |")
    assert json.loads(out.read_text())["rows"][0]["model"] == "pvt_v2_b0"
    assert "ViT-B" not in bench.summary(result)  # no ViT-B row, so no ViT-B fraction line
