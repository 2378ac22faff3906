"""benchmarks/detection.py runs end to end on tiny settings and returns / writes the documented structure
(timings are not checked; the outputs of the two implementations and the two matchers are)."""
import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "detection.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("vistra_bench_detection", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_detection_benchmark_quick(tmp_path):
    bench = _load_module()
    out = tmp_path / "detection.json"
    result = bench.run(["--quick", "--size", "64", "96", "--batches", "1", "--rounds", "1", "--threads", "1",
                        "--matcher", "2", "10", "4", "--quiet", "--out", str(out)])

    assert set(result) >= {"machine", "settings", "rows", "table"}
    assert result["machine"]["threads"] == 1 and {"torch", "transformers", "cpu"} <= set(result["machine"])
    trainable = result["machine"]["trainable_parameters"]
    assert trainable["vistra"] == trainable["transformers"] > 0  # both train the same parameters

    kinds = [r["kind"] for r in result["rows"]]
    assert kinds == ["inference", "train_step", "matcher"]
    inference = result["rows"][0]
    assert inference["max_abs_diff"] < 1e-4  # the converter moved the same weights into vistra
    for row in result["rows"]:
        assert row["vistra_s"] > 0 and row["transformers_s"] > 0 and row["speedup"] > 0 and len(row["rounds"]) >= 1

    lines = result["table"].splitlines()
    assert lines[0] == "| case | vistra | transformers | speedup | goal |"
    assert lines[2].startswith("| inference 64x96, batch 1 |") and ">= 1.3x" in lines[2]
    assert json.loads(out.read_text())["rows"][1]["kind"] == "train_step"


def test_detection_benchmark_models_drop_out_alike():
    """The training step compares equal work: transformers' DETR drops out where the official one (vistra) does."""
    import torch

    from vistra.bench.detection import build_pair

    ours, theirs = build_pair(quick=True)
    assert theirs.config.dropout == theirs.config.attention_dropout == theirs.config.activation_dropout == 0.1
    ours_rates = {m.p for m in ours.transformer.modules() if isinstance(m, torch.nn.Dropout)}
    ours_rates |= {m.dropout for m in ours.transformer.modules() if isinstance(getattr(m, "dropout", None), float)}
    assert ours_rates == {0.1}
