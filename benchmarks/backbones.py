"""Backbone inference throughput on CPU: vistra vs timm, same architecture and the same weights.

For every (model, batch) row both implementations run under torch.inference_mode in eval mode on the same
random 224x224 input, with the same number of threads. After a warmup the two are timed in rounds that
alternate which one goes first; each round also times a reference fp32 matmul, so every row can say what
fraction of the machine's matmul throughput the model reached *at that moment* (the machine is shared and
its speed drifts). Reported figures are medians over rounds; the ratio is the median of the per-round
vistra/timm ratios (paired, so it is robust to drift between rounds).

    python benchmarks/backbones.py                       # full run (about 5 minutes on 2 cores)
    python benchmarks/backbones.py --quick               # smoke run
    python benchmarks/backbones.py --models pvt_v2_b0 --batches 1 8 --rounds 9

Writes benchmarks/results/backbones.json (or --out). Importable: run(args) -> dict, where args is an
argparse.Namespace from parse_args, a list of command-line strings, or None for the defaults.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop

MODELS = ("vit_small_patch16_224", "vit_base_patch16_224", "pvt_v2_b0", "pvt_v2_b2")
QUICK_MODELS = ("vit_small_patch16_224", "pvt_v2_b0")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "backbones.json"
IMG_SIZE = 224


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help=f"model names (default: {' '.join(MODELS)})")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default: 1 8)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per row (default 7; --quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed forwards per model before timing (default 2)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds each timed measurement should last at least (default 0.6; --quick 0)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON result file (default {DEFAULT_OUT})")
    p.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 warmup, small matmul set")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def _settings(args: argparse.Namespace) -> dict:
    """Resolve the defaults that depend on --quick."""
    q = args.quick
    return {
        "models": list(args.models or (QUICK_MODELS if q else MODELS)),
        "batches": list(args.batches or ([1] if q else [1, 8])),
        "rounds": args.rounds or (1 if q else 7),
        "threads": args.threads,
        "warmup": args.warmup if args.warmup is not None else (1 if q else 2),
        "min_time_s": args.min_time if args.min_time is not None else (0.0 if q else 0.6),
        "img_size": IMG_SIZE,
        "quick": q,
        "verbose": not args.quiet,
    }


# ----------------------------------------------------------------------------------------------- models


def _timm_pvt_v2_to_official(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm pvt_v2 keys -> official whai362 keys (vistra's names).

    patch_embed.* -> patch_embed1.*, stages.{i}.downsample.* -> patch_embed{i+1}.*,
    stages.{i}.blocks.{j}.* -> block{i+1}.{j}.* (mlp.dwconv.* -> mlp.dwconv.dwconv.*), stages.{i}.norm.* -> norm{i+1}.*
    """
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "patch_embed":
            new = "patch_embed1." + ".".join(parts[1:])
        elif parts[0] == "stages":
            s = int(parts[1]) + 1
            rest = ".".join(parts[3:])
            if parts[2] == "downsample":
                new = f"patch_embed{s}.{rest}"
            elif parts[2] == "norm":
                new = f"norm{s}.{rest}"
            else:  # blocks.{j}.*
                rest = ".".join(parts[4:]).replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
                new = f"block{s}.{parts[3]}.{rest}"
        else:
            new = key
        out[new] = value
    return out


def _load_timm_weights(model: nn.Module, name: str, state_dict: dict[str, torch.Tensor]) -> None:
    """Copy a timm state_dict into the vistra model (library converter when there, local key map otherwise)."""
    try:
        from vistra.checkpoints import load_pretrained
    except ImportError:
        load_pretrained = None
    if load_pretrained is not None:
        load_pretrained(model, state_dict)
        return
    if name.startswith("pvt_v2"):
        state_dict = _timm_pvt_v2_to_official(state_dict)
    model.load_state_dict(state_dict)


def build_pair(name: str) -> tuple[nn.Module, nn.Module]:
    """(vistra model, timm model) of the same architecture with timm's random weights copied into vistra."""
    import timm

    import vistra

    torch.manual_seed(0)
    ref = timm.create_model(name, pretrained=False).eval()
    ours = vistra.create_model(name).eval()
    _load_timm_weights(ours, name, ref.state_dict())
    return ours, ref


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs (2 x multiply-accumulates) of one forward; CPU's fused attention counted like the GPU kernels."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default: sdpa_flop}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    return counter.get_total_flops()


# ----------------------------------------------------------------------------------------------- timing


def _timed(fn: Callable[[], object], iters: int) -> float:
    """Seconds per call of fn over iters calls."""
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def _iters_for(fn: Callable[[], object], min_time: float) -> int:
    """How many calls of fn last at least min_time (fn is called once to find out)."""
    once = _timed(fn, 1)
    return max(1, int(min_time / max(once, 1e-9) + 0.999))


def _matmul_cases(quick: bool) -> list[tuple[str, int, int, int]]:
    """(label, M, K, N): a square product and ViT-B/16's linear layers at batch 1 and 8 (M = B * 197)."""
    if quick:
        return [("mm 512x512x512", 512, 512, 512)]
    cases = [("mm 2048x2048x2048", 2048, 2048, 2048)]
    for b in (1, 8):
        m = b * 197
        cases += [
            (f"vit_b qkv  B={b}", m, 768, 2304),
            (f"vit_b proj B={b}", m, 768, 768),
            (f"vit_b fc1  B={b}", m, 768, 3072),
            (f"vit_b fc2  B={b}", m, 3072, 768),
        ]
    return cases


def _matmul_fn(m: int, k: int, n: int) -> tuple[Callable[[], object], int]:
    """A call doing x (m, k) @ w.T (k, n) + b like nn.Linear (plain mm for the square case), and its FLOPs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g)
    if m == k == n:
        return (lambda: torch.mm(x, w)), 2 * m * k * n
    bias = torch.randn(n, generator=g)
    return (lambda: F.linear(x, w, bias)), 2 * m * k * n


def matmul_throughput(s: dict) -> dict:
    """Sustained fp32 GFLOP/s of each matmul case (median over rounds); 'best' is the highest of them."""
    cases = []
    for label, m, k, n in _matmul_cases(s["quick"]):
        fn, flops = _matmul_fn(m, k, n)
        _timed(fn, 3)
        iters = _iters_for(fn, max(s["min_time_s"], 0.0))
        runs = [flops / _timed(fn, iters) / 1e9 for _ in range(max(3, s["rounds"]) if not s["quick"] else 1)]
        cases.append({"case": label, "m": m, "k": k, "n": n, "gflops": statistics.median(runs)})
    best = max(cases, key=lambda c: c["gflops"])
    return {"cases": cases, "best_case": best["case"], "best_gflops": best["gflops"]}


def bench_row(name: str, batch: int, pair: tuple[nn.Module, nn.Module], flops_per_img: int, ref_case: dict,
              s: dict) -> dict:
    """Time vistra and timm on one (model, batch), alternating their order each round, plus the reference matmul."""
    ours, theirs = pair
    x = torch.randn(batch, 3, s["img_size"], s["img_size"], generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        diff = (ours(x) - theirs(x)).abs().max().item()
        fns = {"vistra": lambda: ours(x), "timm": lambda: theirs(x)}
        for _ in range(s["warmup"]):
            for fn in fns.values():
                fn()
        iters = max(_iters_for(fns["timm"], s["min_time_s"]), _iters_for(fns["vistra"], s["min_time_s"]))
        mm_fn, mm_flops = _matmul_fn(ref_case["m"], ref_case["k"], ref_case["n"])
        mm_iters = _iters_for(mm_fn, min(s["min_time_s"], 0.3))
        per_round = []
        for r in range(s["rounds"]):
            order = ("vistra", "timm") if r % 2 == 0 else ("timm", "vistra")
            secs = {impl: _timed(fns[impl], iters) for impl in order}
            mm_gflops = mm_flops / _timed(mm_fn, mm_iters) / 1e9
            per_round.append({"vistra": batch / secs["vistra"], "timm": batch / secs["timm"], "mm_gflops": mm_gflops})
    med = lambda key: statistics.median(p[key] for p in per_round)  # noqa: E731
    vistra_gflops = med("vistra") * flops_per_img / 1e9
    return {
        "model": name,
        "batch": batch,
        "vistra_img_s": med("vistra"),
        "timm_img_s": med("timm"),
        "ratio": statistics.median(p["vistra"] / p["timm"] for p in per_round),
        "gflops_per_img": flops_per_img / 1e9,
        "vistra_gflops": vistra_gflops,
        "timm_gflops": med("timm") * flops_per_img / 1e9,
        "ref_matmul_gflops": med("mm_gflops"),
        "vistra_fraction_of_matmul": statistics.median(
            p["vistra"] * flops_per_img / 1e9 / p["mm_gflops"] for p in per_round),
        "max_abs_diff": diff,
        "iters_per_round": iters,
        "rounds": per_round,
    }


# ----------------------------------------------------------------------------------------------- report


def _log(message: str, s: dict) -> None:
    if s["verbose"]:
        print(message, file=sys.stderr, flush=True)


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import timm
        timm_version = timm.__version__
    except ImportError:
        timm_version = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "torch": torch.__version__,
        "timm": timm_version,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | batch | vistra img/s | timm img/s | ratio | GFLOP/img | vistra GFLOP/s | % of matmul |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['vistra_img_s']:.2f} | {r['timm_img_s']:.2f} | {r['ratio']:.3f} "
            f"| {r['gflops_per_img']:.2f} | {r['vistra_gflops']:.1f} | {100 * r['vistra_fraction_of_matmul']:.0f}% |"
        )
    return "\n".join(lines)


def summary(result: dict) -> str:
    mm = result["matmul"]
    out = [markdown_table(result["rows"]), "",
           f"fp32 matmul: best {mm['best_gflops']:.1f} GFLOP/s ({mm['best_case']}); "
           + ", ".join(f"{c['case'].strip()}: {c['gflops']:.1f}" for c in mm["cases"])]
    for r in result["rows"]:
        if r["model"] == "vit_base_patch16_224":
            out.append(f"ViT-B/16 batch {r['batch']}: {r['vistra_gflops']:.1f} GFLOP/s = "
                       f"{100 * r['vistra_fraction_of_matmul']:.0f}% of the matmul throughput measured in the same "
                       f"rounds ({r['ref_matmul_gflops']:.1f} GFLOP/s), "
                       f"{100 * r['vistra_gflops'] / mm['best_gflops']:.0f}% of the best matmul figure above")
    out.append("ratio = median over rounds of vistra/timm measured back to back; img/s are medians over rounds.")
    return "\n".join(out)


def run(args: argparse.Namespace | Sequence[str] | None = None) -> dict:
    """Run the benchmark and return the result dict (machine, settings, matmul, rows, table); writes JSON unless
    args.no_save."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(list(args) if args is not None else [])
    s = _settings(args)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(s["threads"])
    try:
        info = machine_info(s["threads"])
        started = time.perf_counter()
        matmul = matmul_throughput(s)
        _log(f"matmul: best {matmul['best_gflops']:.1f} GFLOP/s ({matmul['best_case']})", s)
        ref_case = next(c for c in matmul["cases"] if c["case"] == matmul["best_case"])
        rows = []
        for name in s["models"]:
            pair = build_pair(name)
            flops = count_flops(pair[0], torch.randn(1, 3, s["img_size"], s["img_size"]))
            for batch in s["batches"]:
                rows.append(bench_row(name, batch, pair, flops, ref_case, s))
                r = rows[-1]
                _log(f"{name} batch {batch}: vistra {r['vistra_img_s']:.2f} img/s, timm {r['timm_img_s']:.2f} img/s, "
                     f"ratio {r['ratio']:.3f}", s)
            del pair
        info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        info["elapsed_s"] = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous_threads)
    result = {"machine": info, "settings": s, "matmul": matmul, "rows": rows}
    result["table"] = markdown_table(rows)
    if not args.no_save:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(summary(result))
    if not args.no_save:
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
