"""Classification's command-line verbs: `train classify`, `eval classify`, `data make digits-cls`, and the
`predict` handler for classifiers. Heavy imports happen inside the handlers, after parsing."""
from __future__ import annotations

import argparse
import json
import os

from vistra.cli_common import CommandGroups, add_config_args, pct, print_skipped


def add_commands(groups: CommandGroups) -> None:
    """Add classification's sub-commands to the `vistra` parser."""
    p = groups.train.add_parser("classify", help="train an image classifier on ImageFolder data (ROOT/train, ROOT/val)")
    p.add_argument("--model", help="registered model name, e.g. vit_small_patch16_224 or vit_digits")
    p.add_argument("--data", help="dataset folder with train/ and val/ ImageFolders")
    add_config_args(p)
    p.add_argument("--out", help="run folder (default runs/classify)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--pretrained", metavar="FILE", help="initial weights (any supported checkpoint format)")
    p.set_defaults(func=train)

    p = groups.eval.add_parser("classify", help="top-1 / top-5 accuracy on an ImageFolder")
    p.add_argument("--checkpoint", required=True, help="model.safetensors, a run folder, or last.pt / best.pt")
    p.add_argument("--data", required=True, help="ImageFolder to evaluate on, e.g. ROOT/val")
    p.add_argument("--model", help="model name, for checkpoints that do not record it")
    p.add_argument("--out", help="folder for eval_metrics.json (default: the checkpoint's folder)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--packed-weights", action="store_true",
                   help="CPU: multiply by MKL-packed copies of the linear weights (faster at small batches, about "
                        "twice the weights' memory; vistra.layers.use_packed_weights)")
    p.set_defaults(func=evaluate)

    p = groups.make.add_parser("digits-cls", help="scikit-learn digits as an ImageFolder (OUT/train, OUT/val)")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=make_digits)

    groups.predict.add_argument("--topk", type=int, default=5, help="classifiers: how many classes to report")
    groups.predict.add_argument("--no-overlay", action="store_true",
                                help="classifiers: do not render attention overlays")


def train(args: argparse.Namespace) -> int:
    from vistra.classification.config import resolve_classify_config
    from vistra.classification.recipe import train_classify

    flags = {"model.name": args.model, "data.root": args.data, "train.out_dir": args.out,
             "model.pretrained": args.pretrained, "data.skip_bad": True if args.skip_bad else None}
    cfg = resolve_classify_config(args.config, args.set, flags, resume=args.resume)
    summary = train_classify(cfg, resume=args.resume)
    if cfg.data.skip_bad:
        print_skipped(summary["skipped_files"])
    print(f"trained {summary['model']} for {summary['epochs']} epochs: val top-1 {pct(summary['val_top1'])}, "
          f"top-5 {pct(summary['val_top5'])}; model saved to {summary['weights']}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from vistra.classification.recipe import eval_classify

    result = eval_classify(args.checkpoint, args.data, model_name=args.model, out=args.out,
                           batch_size=args.batch_size, num_workers=args.num_workers, skip_bad=args.skip_bad,
                           packed_weights=args.packed_weights)
    if args.skip_bad:
        print_skipped(result["skipped_files"])
    print(f"{result['model']} on {args.data}: top-1 {pct(result['top1'])}, top-5 {pct(result['top5'])} "
          f"({int(result['num_images'])} images); wrote {result['json']}")
    return 0


def predict(args: argparse.Namespace) -> int:
    from vistra.classification.predict import PREDICTIONS
    from vistra.classification.predict import predict as run_predict

    report = run_predict(args.images, args.checkpoint, out_dir=args.out, model_name=args.model, topk=args.topk,
                         overlays=not args.no_overlay)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for item in report["predictions"]:
        best = item["top5"][0]
        extra = f"  [{item['attention_overlay']}]" if item["attention_overlay"] else ""
        print(f"{item['image']}: {best['class']} ({best['probability']:.1%}){extra}")
    print(f"wrote {os.path.join(args.out, PREDICTIONS)}")
    return 0


def make_digits(args: argparse.Namespace) -> int:
    from vistra.data.digits import make_digits_cls

    summary = make_digits_cls(args.out, img_size=args.img_size, val_fraction=args.val_fraction, seed=args.seed)
    print(f"wrote digits-cls to {summary['out_dir']}: {summary['num_train']} train and {summary['num_val']} val "
          f"images of {args.img_size}x{args.img_size}, classes {', '.join(summary['classes'])}")
    return 0
