"""Multi-scale deformable attention: vistra's fast paths vs the grid_sample reference, and whole-model Deformable
DETR inference vs transformers (CPU or CUDA).

Part 1, the op at the encoder shape of an 800x1066 image (batch 2, 8 heads, 4 levels of 100x134, 50x67, 25x34 and
13x17, 4 points, d 256 = 8 heads x 32, every pixel a query): forward, and forward + backward, for the reference
(the paper's grid_sample fallback, what transformers runs on CPU), "fast" (pure PyTorch) and "native" (the C
kernel built on first use; CPU only). Each measurement runs in a fresh subprocess so that its peak memory (peak
resident set minus the resident set once the inputs exist; with --device cuda, peak GPU memory allocated above
the inputs) is its own; rounds alternate the implementations.

Part 2, one 800x1066 image through Deformable DETR R50 (vistra, "auto" attention) and transformers'
DeformableDetrForObjectDetection holding the same random weights (moved across by vistra's converter),
interleaved, medians over rounds; the outputs must agree. Without transformers installed, part 2 is skipped.

    vistra bench deform_attn                      # full run (about 5 minutes on 2 cores)
    vistra bench deform_attn --quick              # smoke run on small shapes and a tiny model (also --tiny)
    python -m vistra.bench.deform_attn --device cuda --rounds 5

Writes runs/bench/deform_attn.json (or --out). Importable: run(argv) -> dict.
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

import torch

from vistra.bench.common import (
    RESULTS_DIR,
    add_device_arg,
    cpu_name,
    device_info,
    now,
    optional_version,
    resolve_device,
    synchronize,
)

DEFAULT_OUT = RESULTS_DIR / "deform_attn.json"
FULL_OP = {"shapes": [[100, 134], [50, 67], [25, 34], [13, 17]], "batch": 2, "heads": 8, "head_dim": 32, "points": 4}
TINY_OP = {"shapes": [[12, 16], [6, 8], [3, 4], [2, 2]], "batch": 2, "heads": 8, "head_dim": 8, "points": 4}
IMPLS = ("reference", "fast", "native")
NO_TRANSFORMERS = "transformers is not installed: the whole-model comparison is skipped (pip install transformers)"


def parse_args(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", "--quick", dest="tiny", action="store_true",
                   help="smoke run: small shapes, tiny model, one round")
    p.add_argument("--rounds", type=int, default=None, help="rounds per measurement (default 2; --tiny 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--skip-model", action="store_true", help="only the op, not the whole-model comparison")
    add_device_arg(p)
    p.add_argument("--out", type=Path, default=default_out, help=f"JSON result file (default {default_out})")
    p.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    p.add_argument("--measure", nargs=3, metavar=("IMPL", "MODE", "CONFIG"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _op_inputs(cfg: dict, grad: bool, device: torch.device | str = "cpu"):
    shapes = [tuple(s) for s in cfg["shapes"]]
    S = sum(h * w for h, w in shapes)
    B, M, D, L, P = cfg["batch"], cfg["heads"], cfg["head_dim"], len(shapes), cfg["points"]
    g = torch.Generator().manual_seed(0)
    value = torch.randn(B, S, M, D, generator=g)
    loc = torch.rand(B, S, M, L, P, 2, generator=g)
    attn = torch.rand(B, S, M, L, P, generator=g).softmax(-1)
    return shapes, [t.to(device).requires_grad_(grad) for t in (value, loc, attn)]


def measure_op(impl: str, mode: str, cfg: dict, device: str = "cpu") -> dict:
    """One timed call (mode "forward" or "backward" = forward + backward) in this process: seconds, peak MiB."""
    from vistra.layers.deform_attn import ms_deform_attn

    on = resolve_device(device)
    shapes, (value, loc, attn) = _op_inputs(cfg, grad=mode == "backward", device=on)
    if impl == "native":
        from vistra.layers.deform_attn_native import native_available

        native_available()  # build / load the kernel before timing
    if on.type == "cuda":
        torch.cuda.reset_peak_memory_stats(on)
        base = torch.cuda.memory_allocated(on)
    else:
        base = _rss_bytes()
    synchronize(on)
    start = time.perf_counter()
    out = ms_deform_attn(value, shapes, loc, attn, impl=impl)
    if mode == "backward":
        out.backward(torch.ones_like(out))
    synchronize(on)
    seconds = time.perf_counter() - start
    if on.type == "cuda":
        peak = torch.cuda.max_memory_allocated(on)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    checksum = float(out.detach().double().sum())
    return {"seconds": seconds, "peak_mib": max(peak - base, 0) / 2**20, "checksum": checksum}


def _measure_in_subprocess(impl: str, mode: str, cfg: dict, threads: int, device: str = "cpu") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "vistra.bench.deform_attn", "--threads", str(threads), "--device", device,
           "--measure", impl, mode, json.dumps(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {impl} {mode} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_op(cfg: dict, rounds: int, threads: int, log, device: str = "cpu") -> list[dict]:
    """Rows per mode: median seconds and peak MiB per implementation, and the ratios to the reference."""
    from vistra.layers.deform_attn_native import native_available

    impls = [i for i in IMPLS if i != "native" or (device == "cpu" and native_available())]
    rows = []
    for mode in ("forward", "backward"):
        samples: dict[str, list[dict]] = {i: [] for i in impls}
        for r in range(rounds):
            order = impls if r % 2 == 0 else impls[::-1]
            for impl in order:
                samples[impl].append(_measure_in_subprocess(impl, mode, cfg, threads, device))
                log(f"op {mode} {impl} round {r + 1}: {samples[impl][-1]['seconds']:.3f} s")
        row = {"mode": "forward" if mode == "forward" else "forward+backward"}
        for impl in impls:
            row[f"{impl}_s"] = statistics.median(s["seconds"] for s in samples[impl])
            row[f"{impl}_peak_mib"] = max(s["peak_mib"] for s in samples[impl])
        ref_sum = samples["reference"][0]["checksum"]
        for impl in impls:
            row[f"{impl}_speedup"] = row["reference_s"] / row[f"{impl}_s"]
            row[f"{impl}_memory_ratio"] = row[f"{impl}_peak_mib"] / max(row["reference_peak_mib"], 1e-9)
            row[f"{impl}_checksum_rel_diff"] = abs(samples[impl][0]["checksum"] - ref_sum) / max(abs(ref_sum), 1.0)
        rows.append(row)
    return rows


def _model_pair(tiny: bool):
    """transformers' DeformableDetrForObjectDetection with random weights and vistra's model holding them."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig

    from vistra.checkpoints import load_pretrained
    from vistra.detection.deformable_detr import DeformableDETRConfig, build_deformable_detr

    if tiny:
        resnet = dict(layer_type="basic", depths=[2, 2, 2, 2], hidden_sizes=[64, 128, 256, 512])  # ResNet-18
        hf_kw = dict(d_model=64, encoder_attention_heads=4, decoder_attention_heads=4, encoder_layers=1,
                     decoder_layers=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_queries=20)
        ours = dict(backbone="resnet18", hidden_dim=64, nheads=4, enc_layers=1, dec_layers=2, dim_feedforward=128,
                    num_queries=20)
    else:
        resnet, hf_kw, ours = {}, {}, dict(backbone="resnet50")
    config = DeformableDetrConfig(backbone_config=ResNetConfig(out_features=["stage2", "stage3", "stage4"], **resnet),
                                  num_labels=91, **hf_kw)
    hf = DeformableDetrForObjectDetection(config).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero offsets and attention logits, as in a trained model
        for name, p in hf.named_parameters():
            if "sampling_offsets.weight" in name or "attention_weights.weight" in name:
                p.normal_(0, 0.01, generator=g)
    model = build_deformable_detr(DeformableDETRConfig(num_classes=91, **ours)).eval()
    load_pretrained(model, hf.state_dict())
    return hf, model


def bench_model(tiny: bool, rounds: int, log, device: str = "cpu") -> dict:
    """Median seconds per image of both models, interleaved, and the max |diff| of their outputs."""
    on = resolve_device(device)
    hf, ours = (m.to(on) for m in _model_pair(tiny))
    h, w = (96, 128) if tiny else (800, 1066)
    image = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(1)).to(on)
    times: dict[str, list[float]] = {"transformers": [], "vistra": []}
    outs = {}
    with torch.inference_mode():
        for r in range(rounds + 1):  # round 0 warms up (and builds the native kernel)
            for name in (("vistra", "transformers") if r % 2 else ("transformers", "vistra")):
                synchronize(on)
                start = time.perf_counter()
                if name == "vistra":
                    out = ours(image)
                    outs[name] = (out["pred_logits"], out["pred_boxes"])
                else:
                    out = hf(pixel_values=image)
                    outs[name] = (out.logits, out.pred_boxes)
                synchronize(on)
                if r:
                    times[name].append(time.perf_counter() - start)
                    log(f"model {name} round {r}: {times[name][-1]:.2f} s")
    row = {"model": "Deformable DETR R18 (tiny transformer)" if tiny else "Deformable DETR R50", "image": f"{h}x{w}",
           "transformers_s": statistics.median(times["transformers"]),
           "vistra_s": statistics.median(times["vistra"])}
    row["speedup"] = row["transformers_s"] / row["vistra_s"]
    row["max_abs_diff_logits"] = (outs["vistra"][0] - outs["transformers"][0]).abs().max().item()
    row["max_abs_diff_boxes"] = (outs["vistra"][1] - outs["transformers"][1]).abs().max().item()
    return row


def table(result: dict) -> str:
    """Markdown tables of the op rows and the model row."""
    shapes = " + ".join(f"{h}x{w}" for h, w in result["settings"]["op"]["shapes"])
    lines = [f"| op (levels {shapes}) | reference s | fast s | native s | fast speedup | native speedup | "
             "reference peak MiB | fast peak MiB | native peak MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["op"]:
        cell = lambda key, fmt: format(r[key], fmt) if key in r else "n/a"  # noqa: E731
        lines.append(f"| {r['mode']} | {cell('reference_s', '.3f')} | {cell('fast_s', '.3f')} | "
                     f"{cell('native_s', '.3f')} | {cell('fast_speedup', '.1f')}x | {cell('native_speedup', '.1f')}x | "
                     f"{cell('reference_peak_mib', '.0f')} | {cell('fast_peak_mib', '.0f')} | "
                     f"{cell('native_peak_mib', '.0f')} |")
    if result.get("model"):
        m = result["model"]
        lines += ["", "| model (one image) | transformers s | vistra s | speedup | max abs diff (logits, boxes) |",
                  "|---|---|---|---|---|",
                  f"| {m['model']} {m['image']} | {m['transformers_s']:.2f} | {m['vistra_s']:.2f} | "
                  f"{m['speedup']:.1f}x | {m['max_abs_diff_logits']:.1e}, {m['max_abs_diff_boxes']:.1e} |"]
    return "\n".join(lines)


def summary(result: dict) -> str:
    """The tables and the notes, as the command prints them."""
    return "\n".join([result["table"], *result.get("notes", [])])


def run(argv: Sequence[str] | argparse.Namespace | None = None) -> dict:
    args = argv if isinstance(argv, argparse.Namespace) else parse_args(argv)
    device = resolve_device(args.device)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (1 if args.tiny else 2)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    cfg = TINY_OP if args.tiny else FULL_OP
    compare = not args.skip_model and optional_version("transformers") is not None
    try:
        result = {
            "machine": {"torch": torch.__version__, "threads": args.threads, "cpu": cpu_name(), **device_info(device),
                        "transformers": optional_version("transformers"), "date": now()},
            "settings": {"tiny": args.tiny, "rounds": rounds, "op": cfg, "device": args.device},
            "op": bench_op(cfg, rounds, args.threads, log, args.device),
            "model": bench_model(args.tiny, rounds, log, args.device) if compare else None,
            "notes": [NO_TRANSFORMERS] if not args.skip_model and not compare else [],
        }
    finally:
        torch.set_num_threads(previous_threads)
    result["table"] = table(result)
    if not args.no_save:
        from vistra.atomic_io import write_json_atomic

        write_json_atomic(args.out, result)
    return result


def main(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> None:
    args = parse_args(argv, default_out)
    if args.measure:
        torch.set_num_threads(args.threads)
        impl, mode, cfg = args.measure
        print(json.dumps(measure_op(impl, mode, json.loads(cfg), args.device)))
        return
    print(summary(run(args)))


if __name__ == "__main__":
    main()
