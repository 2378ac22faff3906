"""`vistra bench`: run the benchmarks of vistra.bench on this machine and print their tables."""
from __future__ import annotations

import argparse
import importlib
import time
from collections.abc import Sequence
from pathlib import Path

from vistra.bench import BENCHMARKS
from vistra.cli_common import CommandGroups


def add_commands(groups: CommandGroups) -> None:
    """Add `vistra bench` to the `vistra` parser."""
    listing = "; ".join(f"{name}: {what}" for name, (_, what) in BENCHMARKS.items())
    p = groups.verbs.add_parser(
        "bench", help="time vistra on this machine (vs timm / transformers when installed) and print the tables",
        description=f"Benchmarks: {listing}. Run one alone with `python -m vistra.bench.NAME --help` for every option.")
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    p.add_argument("--quick", action="store_true", help="tiny inputs and one round: checks that everything runs; the "
                                                        "numbers mean little")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's default for this machine)")
    p.add_argument("--out", default="runs/bench",
                   help="folder for the results, one NAME.json each (default runs/bench)")
    p.set_defaults(func=bench)


def bench(args: argparse.Namespace) -> int:
    run_benchmarks(args.names, quick=args.quick, device=args.device, threads=args.threads, out=args.out)
    return 0


def run_benchmarks(names: Sequence[str] = (), quick: bool = False, device: str = "cpu", threads: int | None = None,
                   out: str | Path = "runs/bench") -> dict[str, dict]:
    """Run the named benchmarks (all when none are named) one after another, print each one's summary, write
    out/NAME.json, and return {name: result}. ValueError for unknown names or an unavailable device, before
    anything runs."""
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    import torch

    from vistra.bench.common import resolve_device

    resolve_device(device)
    threads = threads or torch.get_num_threads()
    results = {}
    for name in names or list(BENCHMARKS):
        module_name, what = BENCHMARKS[name]
        module = importlib.import_module(module_name)
        path = Path(out) / f"{name}.json"
        print(f"== {name}: {what} ({device}, {threads} thread{'s' if threads != 1 else ''}"
              f"{', quick' if quick else ''})", flush=True)
        started = time.perf_counter()
        argv = ["--threads", str(threads), "--device", device, "--out", str(path)] + (["--quick"] if quick else [])
        results[name] = module.run(argv)
        print(module.summary(results[name]))
        print(f"wrote {path} ({time.perf_counter() - started:.0f} s)\n", flush=True)
    return results
