"""benchmarks/deform_attn.py runs end to end on tiny shapes and returns the documented structure (timings are
not checked; the checksums and the model outputs must agree)."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "deform_attn.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("vistra_bench_deform_attn", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_op_measurements_agree_and_the_table_renders():
    bench = _load_module()
    sample = bench._measure_in_subprocess("fast", "backward", bench.TINY_OP, 1)  # the path the full run takes
    assert sample["seconds"] > 0 and sample["peak_mib"] >= 0
    rows = []
    for mode in ("forward", "backward"):
        got = {impl: bench.measure_op(impl, mode, bench.TINY_OP) for impl in ("reference", "fast", "native")}
        ref = got["reference"]["checksum"]
        assert all(abs(g["checksum"] - ref) <= 1e-4 * max(1.0, abs(ref)) for g in got.values())
        rows.append({"mode": mode, **{f"{i}_s": g["seconds"] for i, g in got.items()},
                     **{f"{i}_peak_mib": g["peak_mib"] for i, g in got.items()},
                     **{f"{i}_speedup": got["reference"]["seconds"] / g["seconds"] for i, g in got.items()}})
    text = bench.table({"settings": {"op": bench.TINY_OP}, "op": rows, "model": None})
    assert text.splitlines()[0].startswith("| op (levels 12x16 + 6x8 + 3x4 + 2x2) | reference s |")
    assert len(text.splitlines()) == 4


def test_model_comparison_tiny():
    pytest.importorskip("transformers")
    bench = _load_module()
    row = bench.bench_model(tiny=True, rounds=1, log=lambda msg: None)
    assert row["transformers_s"] > 0 and row["vistra_s"] > 0 and row["speedup"] > 0
    assert row["max_abs_diff_logits"] < 1e-4 and row["max_abs_diff_boxes"] < 1e-4  # same weights, same outputs
