"""Detection's command-line verbs: `train detect`, `eval detect`, `data make digits-det`, and the `predict`
handler for detectors. Heavy imports happen inside the handlers, after parsing.

Settings are the flat keys of vistra.detection.recipe (DetRecipe fields, TrainConfig fields, `model.<option>`,
`criterion.<option>`), given in a YAML file (`--config`, where `model:` / `criterion:` may also be sections)
and / or as `--set key=value` items, which win.
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vistra.cli_common import CommandGroups, add_config_args, add_fine_tune_args, add_outside_root_arg, print_skipped

DEFAULT_OUT = "runs/detect"


def add_commands(groups: CommandGroups) -> None:
    """Add detection's sub-commands to the `vistra` parser."""
    p = groups.train.add_parser("detect", help="train DETR / Deformable DETR on COCO-format data")
    p.add_argument("--model", required=True, help="registered detector, e.g. detr_resnet50, or detr with --set "
                                                  "model.backbone=resnet18 model.hidden_dim=128 ...")
    p.add_argument("--data", help="dataset root: train2017/ val2017/ annotations/instances_*.json (COCO), or "
                                  "train/ val/ annotations/instances_{train,val}.json (vistra data make digits-det)")
    _add_path_args(p, ("train", "val"))
    add_config_args(p)
    p.add_argument("--out", default=DEFAULT_OUT, help=f"run folder (default {DEFAULT_OUT})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--skip-bad", action="store_true",
                   help="drop bad annotations and skip missing / unreadable images (counted) instead of stopping")
    add_outside_root_arg(p)
    add_fine_tune_args(p)
    p.set_defaults(func=train)

    p = groups.eval.add_parser("detect", help="COCO box AP (pycocotools) of a trained detector")
    p.add_argument("--checkpoint", required=True, help="model.safetensors, a run folder, or last.pt / best.pt")
    p.add_argument("--data", help="dataset root (see train detect)")
    p.add_argument("--split", help="split to score (default: the run's val split, else val)")
    _add_path_args(p, ("val",))
    p.add_argument("--model", help="detector name, for weights without a vistra description (e.g. official .pth)")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override an eval setting, e.g. --set eval_size=640 max_val_images=100")
    p.add_argument("--results", metavar="JSON", help="also write the COCO-format detections to this file")
    p.add_argument("--skip-bad", action="store_true", help="drop bad annotations / skip bad images (counted)")
    add_outside_root_arg(p)
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=evaluate)

    p = groups.make.add_parser("digits-det", help="digits scattered on canvases, COCO json (OUT/train, OUT/val, "
                                                  "OUT/annotations)")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--train", type=int, default=1000, help="number of train images (default 1000)")
    p.add_argument("--val", type=int, default=200, help="number of val images (default 200)")
    p.add_argument("--canvas", type=int, nargs=2, default=(128, 320), metavar=("MIN", "MAX"),
                   help="canvas side range in pixels (default 128 320)")
    p.add_argument("--digit-size", type=int, nargs=2, default=(16, 96), metavar=("MIN", "MAX"),
                   help="digit size range in pixels (default 16 96)")
    p.add_argument("--max-digits", type=int, default=8, help="at most this many digits per image (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=make_digits_det)

    groups.predict.add_argument("--score-threshold", type=float, default=0.5,
                                help="detectors: report boxes scoring above this (default 0.5)")


def _add_path_args(p: argparse.ArgumentParser, splits: Sequence[str]) -> None:
    for split in splits:
        p.add_argument(f"--{split}-images", metavar="DIR", help=f"{split} image folder (instead of the --data layout)")
        p.add_argument(f"--{split}-ann", metavar="JSON", help=f"{split} COCO json (instead of the --data layout)")


# ------------------------------------------------------------------------------------------ settings
def flatten_settings(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """A YAML mapping of settings -> flat keys: `model: {hidden_dim: 64}` becomes `model.hidden_dim`."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: expected a mapping of detection settings, got {type(values).__name__}")
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("model", "criterion") and isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[str(key)] = value
    return flat


def gather_settings(config: str | None, sets: Sequence[str], flags: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
    """Settings from the YAML file, then the dedicated flags (None = not given), then the --set items."""
    from vistra.config import load_yaml, parse_set

    settings = flatten_settings(load_yaml(config), config) if config else {}
    settings.update({k: v for k, v in (flags or {}).items() if v is not None})
    for item in sets:
        key, value, _ = parse_set(item)
        settings[key] = value
    return settings


def saved_settings(run: Path) -> dict[str, Any]:
    """The settings a run folder was started with (its model.json recipe and config.yaml), for --resume;
    {} when the folder holds none."""
    from vistra.config import load_yaml

    info_file, config_file = run / "model.json", run / "config.yaml"
    if not info_file.is_file():
        return {}
    try:
        recipe = dict(json.loads(info_file.read_text())["recipe"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{info_file}: not a detection run description ({err})") from None
    train_values = load_yaml(config_file) if config_file.is_file() else {}
    train_values.pop("out_dir", None)
    return {**recipe, **train_values}


def _path_flags(args: argparse.Namespace, splits: Sequence[str]) -> dict[str, Any]:
    return {f"{s}_{kind}": getattr(args, f"{s}_{kind}") for s in splits for kind in ("images", "ann")}


# ------------------------------------------------------------------------------------------ handlers
def train(args: argparse.Namespace) -> int:
    from vistra.detection.recipe import train_detect

    if args.data is None and (args.train_images is None or args.train_ann is None):
        raise ValueError("train detect needs --data ROOT, or --train-images DIR with --train-ann JSON")
    flags = {**_path_flags(args, ("train", "val")), "skip_bad": True if args.skip_bad else None,
             "allow_outside_root": True if args.allow_outside_root else None,
             "backbone_weights": args.backbone_weights, "init_weights": args.init_weights}
    settings = gather_settings(args.config, args.set, flags)
    if args.resume:
        settings = {**saved_settings(Path(args.out)), **settings}
    if args.data is None and args.val_images is None and "val_split" not in settings:
        settings["val_split"] = None  # explicit train paths only: no evaluation unless val paths are given
    result = train_detect(args.model, args.data, args.out, settings, resume=args.resume)
    metrics = result["metrics"]
    scored = (f"val AP {100 * metrics['AP']:.1f}, AP50 {100 * metrics['AP50']:.1f} (epoch {int(metrics['epoch'])})"
              if metrics else "no evaluation")
    print(f"trained {args.model} for {len(result['history'])} epochs: {scored}; model saved to "
          f"{result['model_path']}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from vistra.detection.eval_predict import eval_detect

    if args.data is None and (args.val_images is None or args.val_ann is None):
        raise ValueError("eval detect needs --data ROOT, or --val-images DIR with --val-ann JSON")
    settings = gather_settings(None, args.set, {**_path_flags(args, ("val",)),
                                                "skip_bad": True if args.skip_bad else None,
                                                "allow_outside_root": True if args.allow_outside_root else None})
    stats = eval_detect(args.checkpoint, args.data, split=args.split, overrides=settings, device=args.device,
                        results_path=args.results, model_name=args.model, progress=not args.json)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"{stats['checkpoint']} on {stats['split']} ({stats['num_images']} images): "
          + ", ".join(f"{k} {100 * stats[k]:.1f}" for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
          + (f"; detections written to {args.results}" if args.results else ""))
    return 0


def predict(args: argparse.Namespace) -> int:
    from vistra.detection.eval_predict import predict_detect

    report = predict_detect(args.images, args.checkpoint, args.out, threshold=args.score_threshold,
                            model_name=args.model, progress=not args.json, skip_bad=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for item in report["predictions"]:
        found = item["detections"]
        best = ", ".join(f"{d['category']} {d['score']:.2f}" for d in sorted(found, key=lambda d: -d["score"])[:5])
        print(f"{item['image']}: {len(found)} objects{' (' + best + ')' if found else ''}  [{item['rendered']}]")
    if report["skipped"]:
        print_skipped(report["skipped"])
    print(f"wrote {report['json']}")
    return 0


def make_digits_det(args: argparse.Namespace) -> int:
    from vistra.data.digits_det import make_digits_det as make

    summary = make(args.out, n_train=args.train, n_val=args.val, seed=args.seed, canvas=tuple(args.canvas),
                   digit_size=tuple(args.digit_size), max_digits=args.max_digits)
    print(f"wrote digits-det to {Path(summary['out_dir'])}: {summary['num_train']} train images "
          f"({summary['boxes_train']} boxes) and {summary['num_val']} val images ({summary['boxes_val']} boxes), "
          "categories 0..9 (train with num_classes 10)")
    return 0
