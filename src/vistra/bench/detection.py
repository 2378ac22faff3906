"""DETR-R50: vistra vs Hugging Face transformers, same architecture and the same weights (CPU or CUDA).

Rows (each timed for both implementations, in rounds that alternate which one goes first, same threads):
- inference at 800x1066 (the COCO eval size of a 4:3 image), batch 1 and 2, eval mode, torch.inference_mode;
- one training step at batch 2: forward, Hungarian matching, the loss with auxiliary decoder losses, backward
  (train mode, dropout 0.1 in attention, FFN and residuals in both, as the official recipe; no optimizer step);
- the Hungarian matcher alone on batch 8 x 100 queries x 50 targets (cost matrix + scipy assignment).
Both models get the transformers model's random weights, moved into vistra by vistra's own converter
(convert_detr_hf); the inference outputs are compared to prove it. Reported figures are medians over rounds;
a ratio is the median of the per-round transformers/vistra time ratios (paired, so robust to the drift of a
shared machine). Goals: inference >= 1.3x, training step >= 1.2x. Without transformers installed, vistra is
timed alone (its own random weights) and the comparison columns read n/a.

    vistra bench detection                 # full run (about 10 minutes on 2 busy cores)
    vistra bench detection --quick         # smoke run: tiny images and model, 1 round
    python -m vistra.bench.detection --device cuda --rounds 9

Writes runs/bench/detection.json (or --out). Importable: run(args) -> dict, where args is an
argparse.Namespace from parse_args, a list of command-line strings, or None for the defaults.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from vistra.bench.common import (
    RESULTS_DIR,
    add_device_arg,
    loadavg,
    log,
    machine_info,
    resolve_device,
    timed,
)

DEFAULT_OUT = RESULTS_DIR / "detection.json"
GOALS = {"inference": 1.3, "train_step": 1.2}
NO_TRANSFORMERS = "transformers is not installed: vistra timed alone (pip install transformers to compare)"
# --quick: a DETR on ResNet-18 with a small transformer at 128x160 (checks the plumbing, not the speed)
QUICK_MODEL = {"resnet": {"layer_type": "basic", "depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 256, 512]},
               "hf": {"d_model": 64, "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_layers": 1,
                      "decoder_layers": 2, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "num_queries": 20},
               "vistra": {"backbone": "resnet18", "hidden_dim": 64, "nheads": 4, "enc_layers": 1, "dec_layers": 2,
                          "dim_feedforward": 128, "num_queries": 20}}


def parse_args(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="image size (default 800 1066)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="inference batch sizes (default 1 2)")
    p.add_argument("--train-batch", type=int, default=2, help="training-step batch size (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per row (default 5; --quick 1)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--matcher", type=int, nargs=3, default=(8, 100, 50), metavar=("B", "Q", "T"),
                   help="matcher case: batch, queries, targets per image (default 8 100 50)")
    add_device_arg(p)
    p.add_argument("--out", type=Path, default=default_out, help=f"JSON result file (default {default_out})")
    p.add_argument("--no-save", action="store_true", help="do not write the JSON file")
    p.add_argument("--quick", action="store_true", help="smoke run: small model and images, 1 round")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p.parse_args(argv)


def _settings(args: argparse.Namespace) -> dict:
    q = args.quick
    return {"size": list(args.size or ((128, 160) if q else (800, 1066))), "batches": list(args.batches or [1, 2]),
            "train_batch": args.train_batch, "rounds": args.rounds or (1 if q else 5), "threads": args.threads,
            "matcher": list(args.matcher), "model": "detr_resnet18_small (quick)" if q else "detr_resnet50",
            "device": getattr(args, "device", "cpu"), "quick": q, "verbose": not args.quiet}


# ---------------------------------------------------------------------------------------------- models
def build_pair(quick: bool, device: torch.device | str = "cpu") -> tuple[nn.Module, nn.Module | None]:
    """(vistra DETR, transformers DetrForObjectDetection) with the transformers model's random weights moved
    into vistra by vistra's converter; (vistra DETR with its own random weights, None) without transformers."""
    from vistra.checkpoints.convert_detr import convert_detr_hf
    from vistra.detection.detr import DETRConfig, build_detr

    vistra_config = DETRConfig(**(QUICK_MODEL["vistra"] if quick else {"backbone": "resnet50"}))
    try:
        from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig
    except ImportError:
        torch.manual_seed(0)
        return build_detr(vistra_config).eval().to(device), None
    resnet = QUICK_MODEL["resnet"] if quick else {}
    # dropout 0.1 in attention and after the FFN activation as well, as the official DETR (and vistra) trains;
    # transformers' config defaults those two to 0, which would leave it less work in the training step
    config = DetrConfig(backbone=None, use_timm_backbone=False, use_pretrained_backbone=False, num_labels=91,
                        backbone_config=ResNetConfig(out_features=["stage4"], **resnet), dropout=0.1,
                        attention_dropout=0.1, activation_dropout=0.1, **(QUICK_MODEL["hf"] if quick else {}))
    torch.manual_seed(0)
    theirs = DetrForObjectDetection(config).eval()
    ours = build_detr(vistra_config).eval()
    ours.load_state_dict(convert_detr_hf(theirs.state_dict()), strict=True)
    # transformers' DETR on its own ResNet means to train stages 1-3 (the official layer2-4) but its name filter
    # looks for "stage.1" in names that read "stages.1", so it freezes the whole backbone; train what the
    # official recipe (and vistra) trains, so that both steps do the same work
    for name, p in theirs.model.backbone.named_parameters():
        p.requires_grad_(any(f"stages.{i}." in name for i in (1, 2, 3)))
    return ours.to(device), theirs.to(device)


def _targets(batch: int, num: int, seed: int, device: torch.device | str = "cpu") -> list[dict[str, torch.Tensor]]:
    """Random targets: `num` boxes per image (normalised cxcywh inside the image) with COCO-range labels."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        centre = torch.rand(num, 2, generator=g) * 0.6 + 0.2
        size = torch.rand(num, 2, generator=g) * 0.3 + 0.05
        out.append({"labels": torch.randint(1, 91, (num,), generator=g).to(device),
                    "boxes": torch.cat([centre, size], 1).to(device)})
    return out


def _inference_fns(pair: tuple[nn.Module, nn.Module | None], x: torch.Tensor
                   ) -> tuple[dict[str, Callable], float | None]:
    ours, theirs = pair
    fns = {"vistra": lambda: ours(x)}
    if theirs is None:
        return fns, None
    valid = torch.ones(x.shape[0], *x.shape[-2:], dtype=torch.long, device=x.device)  # transformers: 1 = real pixel
    fns["transformers"] = lambda: theirs(pixel_values=x, pixel_mask=valid)
    with torch.inference_mode():
        a, b = fns["vistra"](), fns["transformers"]()
        diff = max((a["pred_logits"] - b.logits).abs().max().item(),
                   (a["pred_boxes"] - b.pred_boxes).abs().max().item())
    return fns, diff


def _train_fns(pair: tuple[nn.Module, nn.Module | None], x: torch.Tensor, targets: list[dict]) -> dict[str, Callable]:
    from vistra.detection.recipe import criterion_for

    ours, theirs = pair
    criterion = criterion_for(ours, ours.num_classes).to(x.device)

    def vistra_step():
        ours.zero_grad(set_to_none=True)
        criterion(ours(x), targets)["loss"].backward()

    fns = {"vistra": vistra_step}
    if theirs is None:
        return fns
    hf_labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    valid = torch.ones(x.shape[0], *x.shape[-2:], dtype=torch.long, device=x.device)

    def hf_step():
        theirs.zero_grad(set_to_none=True)
        theirs(pixel_values=x, pixel_mask=valid, labels=hf_labels).loss.backward()

    fns["transformers"] = hf_step
    return fns


def _matcher_fns(case: Sequence[int], compare: bool, device: torch.device | str = "cpu") -> dict[str, Callable]:
    from vistra.detection.matcher import HungarianMatcher

    batch, queries, num = case
    g = torch.Generator().manual_seed(2)
    outputs = {"pred_logits": torch.randn(batch, queries, 92, generator=g).to(device),
               "pred_boxes": torch.cat([torch.rand(batch, queries, 2, generator=g) * 0.6 + 0.2,
                                        torch.rand(batch, queries, 2, generator=g) * 0.3 + 0.05], -1).to(device)}
    targets = _targets(batch, num, seed=3, device=device)
    ours = HungarianMatcher(1, 5, 2)
    fns = {"vistra": lambda: ours(outputs, targets)}
    if not compare:
        return fns
    from transformers.loss.loss_for_object_detection import HungarianMatcher as HFMatcher

    hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    hf_outputs = {"logits": outputs["pred_logits"], "pred_boxes": outputs["pred_boxes"]}
    theirs = HFMatcher(class_cost=1, bbox_cost=5, giou_cost=2)
    with torch.no_grad():
        same = all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                   for a, b in zip(ours(outputs, targets), theirs(hf_outputs, hf_targets)))
    if not same:
        raise RuntimeError("the two matchers disagree on the benchmark case")
    fns["transformers"] = lambda: theirs(hf_outputs, hf_targets)
    return fns


# ---------------------------------------------------------------------------------------------- timing
def time_pair(fns: dict[str, Callable], rounds: int, repeat: int = 1, grad: bool = False,
              device: torch.device = torch.device("cpu")) -> dict:
    """Median seconds per call of each implementation over rounds that alternate the order (one warmup call
    each first); `repeat` calls per measurement for fast functions. With only "vistra" in fns, the
    transformers fields are None."""
    context = torch.enable_grad if grad else torch.inference_mode
    with context():
        for fn in fns.values():
            fn()
        per_round = []
        for r in range(rounds):
            order = [i for i in (("vistra", "transformers") if r % 2 == 0 else ("transformers", "vistra")) if i in fns]
            per_round.append({impl: sum(timed(fns[impl], device) for _ in range(repeat)) / repeat for impl in order})
    compared = "transformers" in fns
    return {"vistra_s": statistics.median(p["vistra"] for p in per_round),
            "transformers_s": statistics.median(p["transformers"] for p in per_round) if compared else None,
            "speedup": statistics.median(p["transformers"] / p["vistra"] for p in per_round) if compared else None,
            "rounds": per_round}


# ---------------------------------------------------------------------------------------------- report
def markdown_table(rows: list[dict]) -> str:
    lines = ["| case | vistra | transformers | speedup | goal |", "|---|---:|---:|---:|---|"]
    for r in rows:
        goal = GOALS.get(r["kind"])
        compared = r["speedup"] is not None
        verdict = "" if goal is None or not compared else f">= {goal}x: {'met' if r['speedup'] >= goal else 'NOT met'}"
        speedup = f"{r['speedup']:.2f}x" if compared else "n/a"
        theirs = _fmt(r["transformers_s"]) if compared else "n/a"
        lines.append(f"| {r['case']} | {_fmt(r['vistra_s'])} | {theirs} | {speedup} | {verdict} |")
    return "\n".join(lines)


def _fmt(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds >= 1 else f"{1000 * seconds:.1f} ms"


def _speedup(row: dict) -> str:
    return "n/a" if row["speedup"] is None else f"{row['speedup']:.2f}x"


def run(args: argparse.Namespace | Sequence[str] | None = None) -> dict:
    """Run the benchmark -> {"machine", "settings", "rows", "table", "notes"}; writes JSON unless args.no_save."""
    if not isinstance(args, argparse.Namespace):
        args = parse_args(list(args) if args is not None else [])
    s = _settings(args)
    device = resolve_device(s["device"])
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(s["threads"])
    try:
        info = machine_info(s["threads"], device, packages=("transformers",))
        notes = [] if info["transformers"] else [NO_TRANSFORMERS]
        started = time.perf_counter()
        pair = build_pair(s["quick"], device)
        height, width = s["size"]
        g = torch.Generator().manual_seed(1)
        rows = []
        for batch in s["batches"]:
            x = torch.randn(batch, 3, height, width, generator=g).to(device)
            fns, diff = _inference_fns(pair, x)
            rows.append({"case": f"inference {height}x{width}, batch {batch}", "kind": "inference", "batch": batch,
                         "max_abs_diff": diff, **time_pair(fns, s["rounds"], device=device)})
            log(f"{rows[-1]['case']}: speedup {_speedup(rows[-1])} (outputs differ by {diff})", s)
        for model in pair:
            if model is not None:
                model.train()
        x = torch.randn(s["train_batch"], 3, height, width, generator=g).to(device)
        fns = _train_fns(pair, x, _targets(s["train_batch"], 8, seed=4, device=device))
        rows.append({"case": f"training step {height}x{width}, batch {s['train_batch']} (fwd + match + loss + bwd)",
                     "kind": "train_step", "batch": s["train_batch"],
                     **time_pair(fns, s["rounds"], grad=True, device=device)})
        log(f"{rows[-1]['case']}: speedup {_speedup(rows[-1])}", s)
        b, q, t = s["matcher"]
        matcher = _matcher_fns(s["matcher"], compare=pair[1] is not None, device=device)
        rows.append({"case": f"Hungarian matcher, {b} x {q} queries x {t} targets", "kind": "matcher", "batch": b,
                     **time_pair(matcher, max(s["rounds"], 3), repeat=1 if s["quick"] else 5, device=device)})
        log(f"{rows[-1]['case']}: speedup {_speedup(rows[-1])}", s)
        info["trainable_parameters"] = {name: sum(p.numel() for p in m.parameters() if p.requires_grad)
                                        for name, m in zip(("vistra", "transformers"), pair) if m is not None}
        info["loadavg_end"] = loadavg()
        info["elapsed_s"] = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous_threads)
    result = {"machine": info, "settings": s, "rows": rows, "table": markdown_table(rows), "notes": notes}
    if not args.no_save:
        from vistra.atomic_io import write_json_atomic

        write_json_atomic(args.out, result)
    return result


def summary(result: dict) -> str:
    """The table and a line on the machine, as the command prints them."""
    m = result["machine"]
    where = m["gpu"] if m.get("device") == "cuda" else f"{m['cpu']}, {m['threads']} threads"
    load = (f"; load average {m['loadavg_start'][0]:.1f} -> {m['loadavg_end'][0]:.1f}"
            if m.get("loadavg_start") and m.get("loadavg_end") else "")
    lines = [result["table"], "",
             f"{where}, torch {m['torch']}, transformers {m['transformers']}; speedup = median over rounds of "
             f"transformers time / vistra time{load}"]
    return "\n".join(lines + result.get("notes", []))


def main(argv: Sequence[str] | None = None, default_out: Path = DEFAULT_OUT) -> int:
    args = parse_args(argv, default_out)
    result = run(args)
    print(summary(result))
    if not args.no_save:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
