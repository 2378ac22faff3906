"""Segmentation inference throughput: images/s of the segmentation presets at 512x512, and of their backbone alone.

Every preset is built with 150 classes (ADE20K) and random weights, in eval mode under torch.inference_mode,
with the same number of threads. After a warmup, each round times every preset in turn (the order rotates
between rounds), each as the whole model (backbone + head + upsampling to the input size) and then as its
backbone alone on the same input, so models and heads are compared in the same conditions (the machine is
shared and its speed drifts). Reported figures are medians over rounds; the head share is the median of the
per-round shares. Runs on the CPU or, with --device cuda, on the GPU (timings then wait for the GPU's work).

    vistra bench segmentation                            # full run (a few minutes on 2 cores)
    vistra bench segmentation --quick                    # smoke run
    python -m vistra.bench.segmentation --models semfpn_pvt_v2_b0 --size 512 --rounds 5 --device cuda

Writes runs/bench/segmentation.json (or --out). Importable: run(args) -> dict, where args is an
argparse.Namespace from parse_args, a list of command-line strings, or None for the defaults.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vistra.bench.common import (
    RESULTS_DIR,
    add_device_arg,
    count_flops,
    loadavg,
    log,
    machine_info,
    resolve_device,
    timed,
)

MODELS = ("seg_vit_small_patch16_linear", "seg_vit_small_patch16_pup", "semfpn_pvt_v2_b0", "semfpn_pvt_v2_b2")
QUICK_MODELS = ("semfpn_pvt_v2_b0",)
DEFAULT_OUT = RESULTS_DIR / "segmentation.json"
NUM_CLASSES = 150


def parse_args(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help=f"presets (default: {' '.join(MODELS)})")
    p.add_argument("--size", type=int, default=None, help="square input size (default 512; --quick 128)")
    p.add_argument("--batch", type=int, default=1, help="images per forward (default 1)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per model (default 5; --quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed forwards per model (default 1)")
    add_device_arg(p)
    p.add_argument("--out", type=Path, default=default_out, help=f"JSON result file (default {default_out})")
    p.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: one small model, 128x128, 1 round")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def _settings(args: argparse.Namespace) -> dict:
    """Resolve the defaults that depend on --quick."""
    q = args.quick
    return {
        "models": list(args.models or (QUICK_MODELS if q else MODELS)),
        "size": args.size or (128 if q else 512),
        "batch": args.batch,
        "rounds": args.rounds or (1 if q else 5),
        "threads": args.threads,
        "warmup": args.warmup if args.warmup is not None else 1,
        "num_classes": NUM_CLASSES,
        "device": getattr(args, "device", "cpu"),
        "quick": q,
        "verbose": not args.quiet,
    }


def build(name: str, size: int, device: torch.device | str = "cpu") -> nn.Module:
    """The preset `name` with NUM_CLASSES classes for `size` x `size` inputs, random weights, eval mode."""
    import vistra

    torch.manual_seed(0)
    return vistra.create_model(name, num_classes=NUM_CLASSES, img_size=size).eval().to(device)


def _summary(name: str, model: nn.Module, flops: dict, out_shape: tuple, rounds: list[dict], s: dict) -> dict:
    """One table row from the per-round timings of a preset."""
    model_s = statistics.median(r["model_s"] for r in rounds)
    return {
        "model": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "head_params_m": sum(p.numel() for p in model.head.parameters()) / 1e6,
        "gflops_per_img": flops["model"] / 1e9 / s["batch"],
        "backbone_gflops_per_img": flops["backbone"] / 1e9 / s["batch"],
        "img_s": s["batch"] / model_s,
        "ms_per_img": 1000 * model_s / s["batch"],
        "backbone_img_s": s["batch"] / statistics.median(r["backbone_s"] for r in rounds),
        "head_share": statistics.median(r["head_share"] for r in rounds),
        "output_shape": list(out_shape),
        "rounds": rounds,
    }


def bench_rows(s: dict) -> list[dict]:
    """Time every preset: in each round, every model in turn (the order rotates between rounds), each as the whole
    model then its backbone alone, after `warmup` untimed calls of both."""
    device = torch.device(s["device"])
    x = torch.randn(s["batch"], 3, s["size"], s["size"], generator=torch.Generator().manual_seed(1)).to(device)
    models = {name: build(name, s["size"], device) for name in s["models"]}
    fns = {name: {"model": (lambda m=m: m(x)), "backbone": (lambda m=m: m.backbone(x))} for name, m in models.items()}
    flops = {name: {k: count_flops(fn) for k, fn in pair.items()} for name, pair in fns.items()}
    rounds: dict[str, list[dict]] = {name: [] for name in models}
    with torch.inference_mode():
        shapes = {name: tuple(pair["model"]().shape) for name, pair in fns.items()}
        for pair in fns.values():
            for _ in range(s["warmup"]):
                for fn in pair.values():
                    fn()
        names = list(models)
        for r in range(s["rounds"]):
            for name in names[r % len(names):] + names[: r % len(names)]:
                secs = {k: timed(fn, device) for k, fn in fns[name].items()}
                rounds[name].append({"model_s": secs["model"], "backbone_s": secs["backbone"],
                                     "head_share": max(0.0, 1 - secs["backbone"] / secs["model"])})
            log(f"round {r + 1}/{s['rounds']} done", s)
    return [_summary(name, models[name], flops[name], shapes[name], rounds[name], s) for name in models]


def markdown_table(rows: list[dict], size: int, batch: int) -> str:
    lines = [
        f"| model ({size}x{size}, batch {batch}) | params (M) | GFLOP/img | img/s | ms/img | backbone img/s "
        "| head share |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params_m']:.1f} | {r['gflops_per_img']:.1f} | {r['img_s']:.2f} "
                     f"| {r['ms_per_img']:.0f} | {r['backbone_img_s']:.2f} | {100 * r['head_share']:.0f}% |")
    return "\n".join(lines)


def run(args: argparse.Namespace | Sequence[str] | None = None) -> dict:
    """Run the benchmark and return the result dict (machine, settings, rows, table); writes JSON unless
    args.no_save."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(list(args) if args is not None else [])
    s = _settings(args)
    device = resolve_device(s["device"])
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(s["threads"])
    try:
        info = machine_info(s["threads"], device)
        started = time.perf_counter()
        rows = bench_rows(s)
        for r in rows:
            log(f"{r['model']}: {r['img_s']:.2f} img/s ({r['ms_per_img']:.0f} ms), backbone "
                 f"{r['backbone_img_s']:.2f} img/s, head {100 * r['head_share']:.0f}% of the time", s)
        info["loadavg_end"] = loadavg()
        info["elapsed_s"] = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous_threads)
    result = {"machine": info, "settings": s, "rows": rows, "table": markdown_table(rows, s["size"], s["batch"]),
              "notes": []}
    if not args.no_save:
        from vistra.atomic_io import write_json_atomic

        write_json_atomic(args.out, result)
    return result


def summary(result: dict) -> str:
    """The table and a line on the machine, as the command prints them."""
    m, s = result["machine"], result["settings"]
    where = m["gpu"] if m.get("device") == "cuda" else f"{s['threads']} threads, {m['cpu']}"
    return (f"{result['table']}\n\n{where}; medians over {s['rounds']} rounds; load average {m['loadavg_start']} "
            "at the start.")


def main(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> int:
    args = parse_args(argv, default_out)
    result = run(args)
    print(summary(result))
    if not args.no_save:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
