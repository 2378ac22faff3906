"""benchmarks/segmentation.py runs end to end and returns / writes the documented structure (timings not checked)."""
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "segmentation.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("vistra_bench_segmentation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_segmentation_benchmark_quick(tmp_path):
    bench = _load_module()
    out = tmp_path / "segmentation.json"
    result = bench.run(["--quick", "--models", "semfpn_pvt_v2_digits", "--size", "64", "--threads", "1",
                        "--quiet", "--out", str(out)])
    assert set(result) >= {"machine", "settings", "rows", "table"}
    assert result["machine"]["threads"] == 1 and result["settings"]["size"] == 64
    (row,) = result["rows"]
    assert row["model"] == "semfpn_pvt_v2_digits" and row["output_shape"] == [1, 150, 64, 64]
    for key in ("img_s", "ms_per_img", "backbone_img_s", "params_m", "gflops_per_img"):
        assert row[key] > 0, key
    assert row["backbone_gflops_per_img"] < row["gflops_per_img"]  # the head costs something
    assert 0 <= row["head_share"] < 1 and len(row["rounds"]) == 1
    lines = result["table"].splitlines()
    assert lines[0].startswith("| model (64x64, batch 1) | params (M) | GFLOP/img | img/s |")
    assert lines[2].startswith("| semfpn_pvt_v2_digits |")
    assert json.loads(out.read_text())["rows"][0]["model"] == "semfpn_pvt_v2_digits"


def test_default_settings_are_the_documented_ones():
    s = _load_module()._settings(_load_module().parse_args([]))
    assert s["size"] == 512 and s["batch"] == 1 and s["rounds"] == 5
    assert s["models"] == ["seg_vit_small_patch16_linear", "seg_vit_small_patch16_pup", "semfpn_pvt_v2_b0",
                           "semfpn_pvt_v2_b2"]
