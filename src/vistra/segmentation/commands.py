"""Segmentation's command-line verbs: `train segment`, `eval segment`, `data make digits-seg`, and the
`predict` handler for segmentation checkpoints. Heavy imports happen inside the handlers, after parsing."""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any

from vistra.cli_common import CommandGroups, add_config_args, add_fine_tune_args, add_outside_root_arg


def add_commands(groups: CommandGroups) -> None:
    """Add segmentation's sub-commands to the `vistra` parser."""
    p = groups.train.add_parser("segment", help="train a semantic segmentation model on image + mask-PNG folders")
    p.add_argument("--model", required=True, help="a seg_* or semfpn_* preset, e.g. semfpn_pvt_v2_b0")
    p.add_argument("--data", required=True, help="dataset folder (ADE20K, Pascal VOC or SPLIT/{images,masks} layout)")
    add_config_args(p)
    p.add_argument("--out", help="run folder (default runs/segment)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    add_fine_tune_args(p)
    add_outside_root_arg(p)
    p.set_defaults(func=train)

    p = groups.eval.add_parser("segment", help="mIoU, per-class IoU and pixel accuracy on a mask dataset")
    p.add_argument("--checkpoint", required=True, help="run folder, model.safetensors, or last.pt / best.pt")
    p.add_argument("--data", required=True, help="dataset folder (same layouts as training)")
    p.add_argument("--split", help="split to score (default: the run's val split)")
    p.add_argument("--mode", choices=("whole", "slide"), help="whole-image or sliding-window inference")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="recipe override, e.g. --set eval_crop=512 eval_stride=341 reduce_zero_label=true")
    p.add_argument("--out", help="folder for eval_metrics.json (default: the checkpoint's folder)")
    p.add_argument("--device", default="auto")
    add_outside_root_arg(p)
    p.set_defaults(func=evaluate)

    p = groups.make.add_parser("digits-seg",
                               help="digits pasted on noisy canvases, per-pixel classes (OUT/{train,val})")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=make_digits_seg)

    groups.predict.add_argument("--seg-mode", choices=("whole", "slide"),
                                help="segmentation: whole-image or sliding-window inference (default: the run's)")
    groups.predict.add_argument("--seg-alpha", type=float, default=0.5,
                                help="segmentation: opacity of the class colours in the overlay (default 0.5)")


def read_settings(config: str | None, sets: Sequence[str]) -> dict[str, Any]:
    """--config YAML (flat or nested keys) then --set KEY=VALUE items -> one flat settings dict."""
    from vistra.config import load_yaml, parse_set
    from vistra.segmentation.config import flatten

    settings = flatten(load_yaml(config)) if config else {}
    for item in sets:
        key, value, _ = parse_set(item)
        settings[key] = value
    return settings


def train(args: argparse.Namespace) -> int:
    from vistra.segmentation.recipe import train_segment

    settings = read_settings(args.config, args.set)
    if args.backbone_weights:
        settings["backbone_weights"] = args.backbone_weights
    if args.init_weights:
        settings["init_weights"] = args.init_weights
    if args.allow_outside_root:
        settings["allow_outside_root"] = True
    summary = train_segment(args.model, args.data, args.out or settings.pop("out_dir", None), settings, args.resume)
    metrics = summary["metrics"]
    score = f"val mIoU {100 * metrics['mIoU']:.2f}%, pixel accuracy {100 * metrics['pixel_acc']:.2f}%" \
        if "mIoU" in metrics else "no validation split"
    print(f"trained {args.model} for {len(summary['history'])} epochs on {summary['num_train']} images: {score}; "
          f"model saved to {summary['weights']}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from vistra.segmentation.evaluate import eval_segment

    settings = read_settings(None, args.set)
    if args.mode:
        settings["eval_mode"] = args.mode
    if args.allow_outside_root:
        settings["allow_outside_root"] = True
    result = eval_segment(args.checkpoint, args.data, args.split, settings, device=args.device, out=args.out)
    print(f"{result['model']} on {args.data} ({result['split']}, {result['num_images']} images, "
          f"{result['eval_mode']}): mIoU {100 * result['mIoU']:.2f}%, pixel accuracy "
          f"{100 * result['pixel_acc']:.2f}%, mean accuracy {100 * result['mean_acc']:.2f}%; wrote {result['json']}")
    return 0


def predict(args: argparse.Namespace) -> int:
    from vistra.segmentation.predict import PREDICTIONS, predict_segment

    settings = {"eval_mode": args.seg_mode} if args.seg_mode else {}
    records = predict_segment(args.images, args.checkpoint, args.out, settings, alpha=args.seg_alpha)
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    for item in records:
        top = sorted(item["classes"].items(), key=lambda kv: -kv[1])[:3]
        shares = ", ".join(f"{name} {share:.0%}" for name, share in top)
        print(f"{item['image']}: {shares}  [{item['mask']}, {item['overlay']}]")
    print(f"wrote {os.path.join(args.out, PREDICTIONS)}")
    return 0


def make_digits_seg(args: argparse.Namespace) -> int:
    from vistra.data.digits_seg import make_digits_seg as make

    summary = make(args.out, seed=args.seed, n_train=args.n_train, n_val=args.n_val)
    print(f"wrote digits-seg to {summary['out_dir']}: {summary['num_train']} train and {summary['num_val']} val "
          f"images with masks, {len(summary['classes'])} classes (background + digits 0-9)")
    return 0
