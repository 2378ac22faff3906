"""DETR vs Deformable DETR convergence on built-in digits-det data with the same CPU time budget.

Deformable DETR's claim is that it converges far faster than DETR. This trains both from scratch on the same
digits-det canvases with the same backbone (ResNet-18 with trainable BatchNorm: no ImageNet weights here), the
same transformer width, depth and number of queries, each for the same wall-clock budget on its own CPU thread
(both at once, so machine load hits them alike), evaluating COCO AP on the val split after every epoch. It prints
a table of val AP per epoch, writes experiments/results/convergence.json and a plot convergence.png beside it.

    python experiments/convergence.py                     # 15 minutes per model
    python experiments/convergence.py --budget 60 --quick # a smoke run
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DATA: dict[str, Any] = {"n_train": 400, "n_val": 80, "canvas": (64, 96), "digit_size": (20, 40), "max_digits": 2}
QUICK_DATA: dict[str, Any] = {"n_train": 16, "n_val": 4, "canvas": (64, 96), "digit_size": (20, 40), "max_digits": 2}
# Shared by both: backbone, transformer size, queries, images, optimiser; lr constant (no drop: the budget, not
# an epoch count, ends the run).
COMMON: dict[str, Any] = {
    "model.backbone": "resnet18", "model.backbone_kwargs": {"norm_layer": "batch"}, "model.hidden_dim": 128,
    "model.nheads": 4, "model.enc_layers": 1, "model.dec_layers": 2, "model.dim_feedforward": 256,
    "model.num_queries": 10, "model.dropout": 0.0,
    "scales": [64, 80], "max_size": 128, "crop_resize": None, "hflip": 0.0, "eval_size": 80, "eval_max_size": 128,
    "batch_size": 8, "epochs": 1000, "lr_drop_epochs": [], "warmup_epochs": 0.3, "eval_every": 1,
    "progress": False,
}
MODELS: dict[str, dict[str, Any]] = {
    # DETR: stride-16 C5 (DC5), as its small-object variant; softmax + no-object head; official lr 1e-4 scaled
    # up for batch 8 from scratch (the backbone trains at the same lr: it starts random too).
    "detr": {"model.dilation": True, "lr": 6e-4, "lr_backbone": 6e-4},
    # Deformable DETR: C3-C5 plus one extra level, 4 sampling points; focal loss; its official 2e-4 scaled alike.
    "deformable_detr": {"model.num_feature_levels": 4, "model.enc_n_points": 4, "model.dec_n_points": 4,
                        "lr": 6e-4, "lr_backbone": 6e-4},
}


def train_for(name: str, data_dir: str, run_dir: str, settings: dict[str, Any]) -> None:
    """Child process: train `name` on one thread until killed (the parent ends it at the budget)."""
    import torch

    torch.set_num_threads(1)
    from vistra.detection.recipe import train_detect

    train_detect(name, data_dir, run_dir, settings)


def read_curve(run_dir: Path) -> list[dict[str, float]]:
    """Per-epoch records with val AP from a run's metrics.jsonl (complete lines only)."""
    path = run_dir / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "AP" in record:
            records.append(record)
    return records


def run(budget: float, quick: bool, out: Path) -> dict[str, Any]:
    from vistra.data.digits_det import make_digits_det

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "digits-det"
        data = QUICK_DATA if quick else DATA
        make_digits_det(data_dir, **data)
        ctx = mp.get_context("spawn")
        procs = {}
        for name, own in MODELS.items():
            settings = {**COMMON, **own}
            procs[name] = ctx.Process(target=train_for, args=(name, str(data_dir), str(Path(tmp) / name), settings))
        start = time.perf_counter()
        for p in procs.values():
            p.start()
        while time.perf_counter() - start < budget and any(p.is_alive() for p in procs.values()):
            time.sleep(1.0)
        for p in procs.values():
            p.kill()
            p.join()
        curves = {name: read_curve(Path(tmp) / name) for name in MODELS}
    result = {"budget_s": budget, "data": data, "common": COMMON, "models": MODELS, "threads_per_model": 1,
              "curves": {name: [{k: r[k] for k in ("epoch", "AP", "AP50", "AP75", "train_loss", "epoch_time_s")
                                 if k in r} for r in curve] for name, curve in curves.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"))
    return result


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, curve in result["curves"].items():
        seconds = [sum(r.get("epoch_time_s", 0.0) for r in curve[:i + 1]) / 60 for i in range(len(curve))]
        for ax, key in zip(axes, ("AP50", "AP")):
            ax.plot(seconds, [100 * r[key] for r in curve], marker="o", label=name)
            ax.set_xlabel("training time (min, one CPU thread)")
            ax.set_ylabel(f"val {key} (%)")
            ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"digits-det, same backbone and budget ({result['budget_s'] / 60:.0f} min each)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(result: dict[str, Any]) -> str:
    curves = result["curves"]
    epochs = max((len(c) for c in curves.values()), default=0)
    lines = ["| epoch | " + " | ".join(f"{n} AP50 | {n} AP | {n} min" for n in curves) + " |",
             "|---|" + "---|---|---|" * len(curves)]
    for i in range(epochs):
        cells = []
        for curve in curves.values():
            if i < len(curve):
                minutes = sum(r.get("epoch_time_s", 0.0) for r in curve[:i + 1]) / 60
                cells += [f"{100 * curve[i]['AP50']:.1f}", f"{100 * curve[i]['AP']:.1f}", f"{minutes:.1f}"]
            else:
                cells += ["", "", ""]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=900.0, help="seconds of training per model (default 900)")
    parser.add_argument("--quick", action="store_true", help="a few tiny canvases (smoke run)")
    parser.add_argument("--out", type=Path, default=RESULTS / "convergence.json")
    args = parser.parse_args(argv)
    result = run(args.budget, args.quick, args.out)
    print(table(result))
    for name, curve in result["curves"].items():
        best = max((r["AP50"] for r in curve), default=0.0)
        print(f"{name}: {len(curve)} epochs in {args.budget:.0f} s, best val AP50 {100 * best:.1f}%")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
