"""Backbone inference throughput: vistra vs timm, same architecture and the same weights (CPU or CUDA).

For every (model, batch) row both implementations run under torch.inference_mode in eval mode on the same
random 224x224 input, with the same number of threads. After a warmup the two are timed in rounds that
alternate which one goes first; each round also times a reference fp32 matmul, so every row can say what
fraction of the machine's matmul throughput the model reached *at that moment* (the machine may be shared and
its speed drift). Reported figures are medians over rounds; the ratio is the median of the per-round
vistra/timm ratios (paired, so it is robust to drift between rounds). Each model runs in a fresh process
(--same-process: all in this one): glibc serves a large allocation from fresh, zeroed pages until a block that
large has been freed, so a model timed after a bigger one can skip page faults it would take on its own. Without
timm installed, vistra is timed alone and the comparison columns read n/a.

    vistra bench backbones                               # full run (about 5 minutes on 2 cores)
    vistra bench backbones --quick                       # smoke run
    python -m vistra.bench.backbones --models pvt_v2_b0 --batches 1 8 --rounds 9 --device cuda

Writes runs/bench/backbones.json (or --out). Importable: run(args) -> dict, where args is an
argparse.Namespace from parse_args, a list of command-line strings, or None for the defaults.
"""
from __future__ import annotations

import argparse
import copy
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
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
from vistra.layers.linear import packed_weights_supported, use_packed_weights

MODELS = ("vit_small_patch16_224", "vit_base_patch16_224", "pvt_v2_b0", "pvt_v2_b2")
QUICK_MODELS = ("vit_small_patch16_224", "pvt_v2_b0")
DEFAULT_OUT = RESULTS_DIR / "backbones.json"
IMG_SIZE = 224
NO_TIMM = "timm is not installed: vistra timed alone (pip install timm to compare)"


def parse_args(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, help=f"model names (default: {' '.join(MODELS)})")
    p.add_argument("--batches", nargs="+", type=int, default=None, help="batch sizes (default: 1 8)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per row (default 7; --quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed forwards per model before timing (default 2)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds each timed measurement should last at least (default 0.6; --quick 0)")
    add_device_arg(p)
    p.add_argument("--out", type=Path, default=default_out, help=f"JSON result file (default {default_out})")
    p.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, 1 warmup, small matmul set")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--no-packed", action="store_true",
                   help="skip the third measurement, vistra on MKL-packed weights (use_packed_weights)")
    p.add_argument("--same-process", action="store_true",
                   help="time every model in this process (by default each model runs in a fresh one: what one "
                        "model frees changes how fast the next one's memory is allocated)")
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
        "device": getattr(args, "device", "cpu"),
        "quick": q,
        "verbose": not args.quiet,
        "process_per_model": not args.same_process,
        "packed": not args.no_packed,
    }


# ----------------------------------------------------------------------------------------------- models
def build_pair(name: str, device: torch.device | str = "cpu") -> tuple[nn.Module, nn.Module | None]:
    """(vistra model, timm model) of the same architecture with timm's random weights copied into vistra;
    (vistra model with its own random weights, None) when timm is not installed."""
    import vistra
    from vistra.checkpoints import load_pretrained

    torch.manual_seed(0)
    try:
        import timm
    except ImportError:
        return vistra.create_model(name).eval().to(device), None
    ref = timm.create_model(name, pretrained=False).eval()
    ours = vistra.create_model(name).eval()
    load_pretrained(ours, ref.state_dict())
    return ours.to(device), ref.to(device)


# ----------------------------------------------------------------------------------------------- timing
def _iters_for(fn: Callable[[], object], min_time: float, device: torch.device = torch.device("cpu")) -> int:
    """How many calls of fn last at least min_time (fn is called once to find out)."""
    once = timed(fn, device, 1)
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


def _matmul_fn(m: int, k: int, n: int, device: torch.device = torch.device("cpu")) -> tuple[Callable[[], object], int]:
    """A call doing x (m, k) @ w.T (k, n) + b like nn.Linear (plain mm for the square case), and its FLOPs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).to(device)
    w = torch.randn(n, k, generator=g).to(device)
    if m == k == n:
        return (lambda: torch.mm(x, w)), 2 * m * k * n
    bias = torch.randn(n, generator=g).to(device)
    return (lambda: F.linear(x, w, bias)), 2 * m * k * n


def matmul_throughput(s: dict) -> dict:
    """Sustained fp32 GFLOP/s of each matmul case (median over rounds); 'best' is the highest of them."""
    device = torch.device(s["device"])
    cases = []
    for label, m, k, n in _matmul_cases(s["quick"]):
        fn, flops = _matmul_fn(m, k, n, device)
        timed(fn, device, 3)
        iters = _iters_for(fn, max(s["min_time_s"], 0.0), device)
        runs = [flops / timed(fn, device, iters) / 1e9 for _ in range(max(3, s["rounds"]) if not s["quick"] else 1)]
        cases.append({"case": label, "m": m, "k": k, "n": n, "gflops": statistics.median(runs)})
    best = max(cases, key=lambda c: c["gflops"])
    return {"cases": cases, "best_case": best["case"], "best_gflops": best["gflops"]}


def bench_row(name: str, batch: int, pair: tuple[nn.Module, nn.Module | None], flops_per_img: int, ref_case: dict,
              s: dict, packed: nn.Module | None = None) -> dict:
    """Time vistra and timm on one (model, batch), rotating their order each round, plus the reference matmul;
    `packed`, when given, is vistra's model on packed weights (use_packed_weights), timed alongside.
    Without a timm model (None) vistra is timed alone and the comparison fields are None."""
    ours, theirs = pair
    device = torch.device(s["device"])
    x = torch.randn(batch, 3, s["img_size"], s["img_size"], generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        fns = {"vistra": lambda: ours(x)}
        diff = packed_diff = None
        reference = ours(x) if theirs is None else theirs(x)  # what packed is compared with: timm, else vistra
        if theirs is not None:
            diff = (ours(x) - reference).abs().max().item()
            fns["timm"] = lambda: theirs(x)
        if packed is not None:
            packed_diff = (packed(x) - reference).abs().max().item()
            fns["packed"] = lambda: packed(x)
        for _ in range(s["warmup"]):
            for fn in fns.values():
                fn()
        iters = max(_iters_for(fn, s["min_time_s"], device) for fn in fns.values())
        mm_fn, mm_flops = _matmul_fn(ref_case["m"], ref_case["k"], ref_case["n"], device)
        mm_iters = _iters_for(mm_fn, min(s["min_time_s"], 0.3), device)
        per_round = []
        impls = list(fns)
        for r in range(s["rounds"]):
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            secs = {impl: timed(fns[impl], device, iters) for impl in order}
            mm_gflops = mm_flops / timed(mm_fn, device, mm_iters) / 1e9
            per_round.append({**{impl: batch / t for impl, t in secs.items()}, "mm_gflops": mm_gflops})
    med = lambda key: statistics.median(p[key] for p in per_round)  # noqa: E731
    compared = theirs is not None

    def fraction(impl: str) -> float:
        return statistics.median(p[impl] * flops_per_img / 1e9 / p["mm_gflops"] for p in per_round)

    return {
        "model": name,
        "batch": batch,
        "vistra_img_s": med("vistra"),
        "timm_img_s": med("timm") if compared else None,
        "ratio": statistics.median(p["vistra"] / p["timm"] for p in per_round) if compared else None,
        "packed_img_s": med("packed") if packed is not None else None,
        "packed_ratio": statistics.median(p["packed"] / p["timm"] for p in per_round)
        if compared and packed is not None else None,
        "gflops_per_img": flops_per_img / 1e9,
        "vistra_gflops": med("vistra") * flops_per_img / 1e9,
        "timm_gflops": med("timm") * flops_per_img / 1e9 if compared else None,
        "ref_matmul_gflops": med("mm_gflops"),
        "vistra_fraction_of_matmul": fraction("vistra"),
        "packed_fraction_of_matmul": fraction("packed") if packed is not None else None,
        "max_abs_diff": diff,
        "packed_max_abs_diff": packed_diff,
        "iters_per_round": iters,
        "rounds": per_round,
    }


def model_rows(name: str, ref_case: dict, s: dict) -> list[dict]:
    """bench_row for each batch size of one model (a fresh process runs this when the settings ask for one)."""
    torch.set_num_threads(s["threads"])
    device = resolve_device(s["device"])
    pair = build_pair(name, device)
    x = torch.randn(1, 3, s["img_size"], s["img_size"]).to(device)
    flops = count_flops(partial(pair[0], x))
    packed = None
    if s["packed"] and device.type == "cpu" and packed_weights_supported():
        packed = copy.deepcopy(pair[0])
        use_packed_weights(packed)
    rows = []
    for batch in s["batches"]:
        rows.append(bench_row(name, batch, pair, flops, ref_case, s, packed))
        r = rows[-1]
        log(f"{name} batch {batch}: vistra {r['vistra_img_s']:.2f} img/s (packed {_num(r['packed_img_s'], '.2f')}),"
            f" timm {_num(r['timm_img_s'], '.2f')} img/s, ratio {_num(r['ratio'], '.3f')}", s)
    return rows


# ----------------------------------------------------------------------------------------------- report
def _num(value: float | None, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | batch | vistra img/s | timm img/s | ratio | GFLOP/img | vistra GFLOP/s | % of matmul "
        "| packed img/s | packed ratio | packed % of matmul |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['vistra_img_s']:.2f} | {_num(r['timm_img_s'], '.2f')} "
            f"| {_num(r['ratio'], '.3f')} | {r['gflops_per_img']:.2f} | {r['vistra_gflops']:.1f} "
            f"| {_percent(r['vistra_fraction_of_matmul'])} | {_num(r.get('packed_img_s'), '.2f')} "
            f"| {_num(r.get('packed_ratio'), '.3f')} | {_percent(r.get('packed_fraction_of_matmul'))} |"
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
                       f"{100 * r['vistra_gflops'] / mm['best_gflops']:.0f}% of the best matmul figure above"
                       + (f"; on packed weights {_percent(r['packed_fraction_of_matmul'])}"
                          if r.get("packed_fraction_of_matmul") else ""))
    out.append("ratio = median over rounds of vistra/timm measured back to back; img/s are medians over rounds.")
    out += result.get("notes", [])
    return "\n".join(out)


def run(args: argparse.Namespace | Sequence[str] | None = None) -> dict:
    """Run the benchmark and return the result dict (machine, settings, matmul, rows, table, notes); writes JSON
    unless args.no_save."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(list(args) if args is not None else [])
    s = _settings(args)
    device = resolve_device(s["device"])
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(s["threads"])
    try:
        info = machine_info(s["threads"], device, packages=("timm",), cpu_capability=True)
        notes = [] if info["timm"] else [NO_TIMM]
        started = time.perf_counter()
        matmul = matmul_throughput(s)
        log(f"matmul: best {matmul['best_gflops']:.1f} GFLOP/s ({matmul['best_case']})", s)
        ref_case = next(c for c in matmul["cases"] if c["case"] == matmul["best_case"])
        rows = []
        for name in s["models"]:
            if s["process_per_model"]:
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
                    rows += fresh.submit(model_rows, name, ref_case, s).result()
            else:
                rows += model_rows(name, ref_case, s)
        info["loadavg_end"] = loadavg()
        info["elapsed_s"] = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous_threads)
    result = {"machine": info, "settings": s, "matmul": matmul, "rows": rows, "notes": notes}
    result["table"] = markdown_table(rows)
    if not args.no_save:
        from vistra.atomic_io import write_json_atomic

        write_json_atomic(args.out, result)
    return result


def main(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> int:
    args = parse_args(argv, default_out)
    result = run(args)
    print(summary(result))
    if not args.no_save:
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
