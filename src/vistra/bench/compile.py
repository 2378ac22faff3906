"""Inference latency: eager PyTorch vs torch.compile (inductor) vs onnxruntime, same model, weights and input.

For every setting (model, image size, batch 1) the model is compiled with vistra.export.compile_model and
exported with vistra.export.export_onnx (dynamic batch and size, as `vistra export` writes it); the time both
take is reported. After a warmup the three are timed in rounds that rotate which one goes first (the machine may
be shared and its speed drift); figures are medians over rounds, each round timing as many calls as fill
--min-time. Speedups are medians of the per-round ratios. max |diff| compares the outputs with eager's.
onnxruntime runs with as many intra-op threads as torch.

    vistra bench compile                        # vit_small_patch16_224 224x224, detr_resnet50 512x512
    vistra bench compile --quick                # smoke run: tiny models
    python -m vistra.bench.compile --rounds 9 --threads 4

Writes runs/bench/compile.json (or --out). Importable: run(argv) -> dict.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from vistra.bench.common import RESULTS_DIR, add_device_arg, cpu_name, device_info, loadavg, now, resolve_device

DEFAULT_OUT = RESULTS_DIR / "compile.json"
SETTINGS = [  # (name, preset, overrides, (height, width))
    ("vit_small_patch16_224 224x224", "vit_small_patch16_224", {}, (224, 224)),
    ("detr_resnet50 512x512", "detr_resnet50", {}, (512, 512)),
]
QUICK = [
    ("tiny ViT 64x64", "vit_tiny_patch16_224", {"img_size": 64}, (64, 64)),
    ("tiny DETR 64x96", "detr", {"backbone": "resnet18", "hidden_dim": 32, "nheads": 2, "enc_layers": 1,
                                 "dec_layers": 1, "dim_feedforward": 64, "num_queries": 8}, (64, 96)),
]


def parse_args(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per setting (default 5; --quick 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls of each runner (default 3; --quick 1)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds each timed measurement lasts at least (default 1.0; --quick 0)")
    p.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default 2)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny models, one round")
    add_device_arg(p)
    p.add_argument("--out", type=Path, default=default_out, help=f"JSON result file (default {default_out})")
    p.add_argument("--no-save", action="store_true")
    return p.parse_args(argv)


def _time_call(fn: Callable[[], object], min_time: float) -> float:
    """Seconds per call of fn, over as many calls as fill min_time (at least one)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def _outputs(out) -> list:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [out["pred_logits"], out["pred_boxes"]] if "pred_boxes" in out else list(out.values())
    return list(out)


def _max_diff(got: list, want: list) -> float:
    import torch

    return max(float((torch.as_tensor(a) - b).abs().max()) for a, b in zip(got, want))


def measure(preset: str, overrides: dict, size: tuple[int, int], args: argparse.Namespace) -> dict:
    """Build, compile, export and time one setting in this process."""
    import tempfile

    import torch

    import vistra
    from vistra.export import compile_model, example_inputs, export_onnx, missing_packages, wrap_for_export

    torch.manual_seed(0)
    model = vistra.create_model(preset, **overrides).eval()
    wrapper = wrap_for_export(model)
    inputs = example_inputs(wrapper, size, generator=torch.Generator().manual_seed(0))
    row: dict = {"preset": preset, "size": list(size), "batch": 1,
                 "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}
    runners: dict[str, Callable[[], object]] = {}
    with torch.inference_mode():
        want = _outputs(model(*inputs))
    runners["eager"] = lambda: model(*inputs)

    torch._dynamo.reset()
    compiled = compile_model(model, backend=args.backend)
    start = time.perf_counter()
    with torch.inference_mode():
        got = _outputs(compiled(*inputs))
    row["compile_s"] = time.perf_counter() - start
    row["compiled_max_diff"] = _max_diff(got, want)
    runners["compiled"] = lambda: compiled(*inputs)

    if not missing_packages():
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        with tempfile.TemporaryDirectory(prefix="vistra-bench-onnx-") as folder:
            start = time.perf_counter()
            result = export_onnx(wrapper, Path(folder) / "model.onnx", inputs)
            row["export_s"] = time.perf_counter() - start
            session = onnxruntime.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
        feed = {name: x.numpy() for name, x in zip(wrapper.input_names, inputs)}
        row["onnx_max_diff"] = _max_diff(session.run(None, feed), [w.float() for w in want])
        runners["onnxruntime"] = lambda: session.run(None, feed)

    with torch.inference_mode():
        for fn in runners.values():
            for _ in range(args.warmup):
                fn()
        times: dict[str, list[float]] = {name: [] for name in runners}
        names = list(runners)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
                times[name].append(_time_call(runners[name], args.min_time))
    for name, values in times.items():
        row[f"{name}_ms"] = statistics.median(values) * 1e3
    row["compiled_speedup"] = statistics.median(e / c for e, c in zip(times["eager"], times["compiled"]))
    if "onnxruntime" in times:
        row["onnx_speedup"] = statistics.median(e / o for e, o in zip(times["eager"], times["onnxruntime"]))
    return row


def run(argv: Sequence[str] | argparse.Namespace | None = None) -> dict:
    import torch

    args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
    device = resolve_device(args.device)
    if device.type != "cpu":
        raise ValueError("the compile benchmark runs on the CPU (onnxruntime's CPU provider); use --device cpu")
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.min_time = args.min_time if args.min_time is not None else (0.0 if args.quick else 1.0)
    torch.set_num_threads(args.threads)
    from vistra.export import missing_packages

    notes = []
    if missing_packages():
        notes.append(f"onnxruntime not timed: {', '.join(missing_packages())} not installed (pip install vistra[export])")
    rows = []
    for name, preset, overrides, size in QUICK if args.quick else SETTINGS:
        row = {"setting": name, **measure(preset, overrides, size, args)}
        rows.append(row)
        print(f"{name}: eager {row['eager_ms']:.1f} ms, compiled {row['compiled_ms']:.1f} ms "
              f"({row['compiled_speedup']:.2f}x, built in {row['compile_s']:.0f} s)"
              + (f", onnxruntime {row['onnxruntime_ms']:.1f} ms" if "onnxruntime_ms" in row else ""), file=sys.stderr)
    result = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads, **device_info(device),
                    "torch": torch.__version__, "date": now(), "loadavg": loadavg()},
        "settings": {"rounds": args.rounds, "warmup": args.warmup, "min_time_s": args.min_time,
                     "backend": args.backend, "quick": args.quick},
        "rows": rows,
        "notes": notes,
    }
    result["table"] = table(result)
    if not args.no_save:
        from vistra.atomic_io import write_json_atomic

        write_json_atomic(args.out, result)
    return result


def table(result: dict) -> str:
    lines = ["| setting | eager ms | compiled ms | speedup | compile s | onnxruntime ms | speedup | export s | "
             "max abs diff (compiled / onnx) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in result["rows"]:
        onnx = (f"{r['onnxruntime_ms']:.1f} | {r['onnx_speedup']:.2f}x | {r['export_s']:.0f}"
                if "onnxruntime_ms" in r else "n/a | n/a | n/a")
        diffs = f"{r['compiled_max_diff']:.1e} / " + (f"{r['onnx_max_diff']:.1e}" if "onnx_max_diff" in r else "n/a")
        lines.append(f"| {r['setting']} | {r['eager_ms']:.1f} | {r['compiled_ms']:.1f} | {r['compiled_speedup']:.2f}x "
                     f"| {r['compile_s']:.0f} | {onnx} | {diffs} |")
    return "\n".join(lines)


def summary(result: dict) -> str:
    """The table and the notes, as the command prints them."""
    return "\n".join([result["table"], *result.get("notes", [])])


def main(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> None:
    print(summary(run(parse_args(argv, default_out))))


if __name__ == "__main__":
    main()
