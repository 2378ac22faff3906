"""Tracking throughput: frames/s of online TransCenter-style tracking, split into model and association.

For each setting (preset, frame size) a synthetic sequence of moving boxes is tracked frame by frame exactly as
`vistra track` does it (frame t encoded once and reused as the next frame's t-1, centers decoded, Hungarian
association on the displaced centers). Random weights give random heatmaps, so the detections the tracker sees
are the top `--objects` peaks (scores forced above the thresholds): the association works on a realistic number
of objects. Each setting runs in its own subprocess so its peak memory (peak resident set above the start; with
--device cuda, peak GPU memory allocated) is its own.

    vistra bench tracking                         # 640x1088 (MOT17's training size) and the demo's 120x160
    vistra bench tracking --quick                 # smoke run (also --tiny)
    python -m vistra.bench.tracking --device cuda --frames 30

Writes runs/bench/tracking.json (or --out). Importable: run(argv) -> dict.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vistra.bench.common import RESULTS_DIR, add_device_arg, cpu_name, device_info, loadavg, now, resolve_device

DEFAULT_OUT = RESULTS_DIR / "tracking.json"
DEMO_MODEL = {"d_model": 64, "n_heads": 4, "dec_layers": 2, "dim_feedforward": 128, "head_channels": 32}
SETTINGS = [  # (name, preset, model overrides, (height, width))
    ("transcenter_pvt_v2_b0 640x1088", "transcenter_pvt_v2_b0", {}, (640, 1088)),
    ("transcenter_pvt_v2_b2 640x1088", "transcenter_pvt_v2_b2", {}, (640, 1088)),
    ("demo model 120x160", "transcenter_pvt_v2_b0", DEMO_MODEL, (120, 160)),
]
TINY = [("tiny 64x96", "transcenter_pvt_v2_b0", {"d_model": 32, "n_heads": 4, "dec_layers": 1,
                                                 "dim_feedforward": 64, "head_channels": 16}, (64, 96))]


def parse_args(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=None, help="frames tracked per setting (default 12; --tiny 3)")
    p.add_argument("--objects", type=int, default=20, help="detections handed to the tracker per frame")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tiny", "--quick", dest="tiny", action="store_true", help="smoke run: one tiny model, 3 frames")
    add_device_arg(p)
    p.add_argument("--out", type=Path, default=default_out, help=f"JSON result file (default {default_out})")
    p.add_argument("--no-save", action="store_true")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one setting (JSON) in this process
    return p.parse_args(argv)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(preset: str, overrides: dict, size: tuple[int, int], frames: int, objects: int, threads: int,
            device: str = "cpu") -> dict:
    """Track `frames` synthetic frames in this process: seconds per frame in the model and in association."""
    import numpy as np
    import torch

    import vistra
    from vistra.bench.common import synchronize
    from vistra.tracking.centernet import decode
    from vistra.tracking.config import TrackerConfig
    from vistra.tracking.tracker import Detections, Tracker

    torch.set_num_threads(threads)
    on = resolve_device(device)
    base = _rss()
    torch.manual_seed(0)
    model = vistra.create_model(preset, **overrides).eval().to(on)
    gpu_base = torch.cuda.memory_allocated(on) if on.type == "cuda" else 0
    tracker = Tracker(TrackerConfig(match_score=0.0, new_track_score=0.0))
    H, W = size
    stride = model.config.stride
    model_s, assoc_s = [], []
    previous = None
    with torch.inference_mode():
        for t in range(frames + 1):  # the first frame is a warmup
            image = torch.randn(1, 3, H, W).to(on)
            synchronize(on)
            start = time.perf_counter()
            current = model.encode(image)
            outputs = model.decode(current, previous if previous is not None else current)
            (found,) = decode(outputs, stride, max_objects=objects)
            found = {k: v.cpu() for k, v in found.items()}  # waits for the device
            previous = current
            mid = time.perf_counter()
            n = len(found["scores"])
            dets = Detections(found["boxes"].numpy(), np.linspace(1.0, 0.5, n), np.zeros(n, dtype=np.int64),
                              found["prev_centers"].numpy())
            tracker.update(dets)
            end = time.perf_counter()
            if t:
                model_s.append(mid - start)
                assoc_s.append(end - mid)
    if on.type == "cuda":
        peak_bytes = torch.cuda.max_memory_allocated(on) - gpu_base
    else:
        peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    m, a = statistics.median(model_s), statistics.median(assoc_s)
    return {"model_ms": 1000 * m, "association_ms": 1000 * a, "fps": 1.0 / (m + a),
            "peak_mib": max(peak_bytes, 0) / 2**20,
            "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}


def run(argv: Sequence[str] | argparse.Namespace | None = None) -> dict:
    args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
    device = resolve_device(args.device)
    settings = TINY if args.tiny else SETTINGS
    frames = args.frames or (3 if args.tiny else 12)
    rows = []
    for name, preset, overrides, size in settings:
        spec = json.dumps({"preset": preset, "overrides": overrides, "size": size, "frames": frames,
                           "objects": args.objects, "threads": args.threads, "device": args.device})
        done = subprocess.run([sys.executable, "-m", "vistra.bench.tracking", "--one", spec], capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        row = {"setting": name, "preset": preset, "size": list(size), **measured}
        rows.append(row)
        print(f"{name}: {row['fps']:.2f} frames/s (model {row['model_ms']:.1f} ms, association "
              f"{row['association_ms']:.2f} ms), peak {row['peak_mib']:.0f} MiB", file=sys.stderr)
    result = {
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads, **device_info(device),
                    "torch": __import__("torch").__version__, "date": now(), "loadavg": loadavg()},
        "settings": {"frames": frames, "objects": args.objects, "device": args.device},
        "rows": rows,
        "notes": [],
    }
    result["table"] = table(result)
    if not args.no_save:
        from vistra.atomic_io import write_json_atomic

        write_json_atomic(args.out, result)
    return result


def summary(result: dict) -> str:
    """The table and the notes, as the command prints them."""
    return "\n".join([result["table"], *result.get("notes", [])])


def table(result: dict) -> str:
    lines = ["| setting | params (M) | frames/s | model ms/frame | association ms/frame | peak MiB |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['setting']} | {r['parameters_m']:.1f} | {r['fps']:.2f} | {r['model_ms']:.1f} | "
                     f"{r['association_ms']:.2f} | {r['peak_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> None:
    args = parse_args(argv, default_out)
    if args.one:
        spec = json.loads(args.one)
        print(json.dumps(measure(spec["preset"], spec["overrides"], tuple(spec["size"]), spec["frames"],
                                 spec["objects"], spec["threads"], spec.get("device", "cpu"))))
        return
    print(summary(run(args)))


if __name__ == "__main__":
    main()
