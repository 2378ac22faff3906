"""benchmarks/tracking.py runs end to end and writes the documented structure (timings not checked)."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "tracking.py"


def test_tracking_benchmark_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("vistra_bench_tracking", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "tracking.json"
    result = bench.run(["--tiny", "--threads", "1", "--objects", "5", "--out", str(out)])
    (row,) = result["rows"]
    assert row["setting"] == "tiny 64x96" and row["size"] == [64, 96]
    for key in ("fps", "model_ms", "association_ms", "parameters_m"):
        assert row[key] > 0, key
    assert row["peak_mib"] >= 0
    assert result["table"].splitlines()[2].startswith("| tiny 64x96 |")
    assert json.loads(out.read_text())["rows"][0]["setting"] == "tiny 64x96"
