"""Tracking's command-line verbs: `vistra train track` (the TransCenter-style tracker), `vistra track SOURCE
--checkpoint C` (with a tracker, or any detector: tracking by detection), `vistra eval track GT_ROOT RESULTS`
(HOTA / MOTA / IDF1), `vistra data make digits-mot OUT` and `vistra data convert SRC DST --to FORMAT`.
Heavy imports happen inside the handlers, after parsing."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vistra.cli_common import (CommandGroups, add_config_args, add_fine_tune_args, add_outside_root_arg, pct,
                               print_skipped)

DEFAULT_OUT = "runs/track"


def add_class_map_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--class-map", metavar="MAP", help="rename classes: 'Taxi=car,Misc=ignore' or a file of such "
                                                      "lines; a target is a class name, ignore (DontCare) or drop")


def add_commands(groups: CommandGroups) -> None:
    """Add tracking's sub-commands to the `vistra` parser."""
    from vistra.tracking.config import TrackerConfig  # a plain dataclass: cheap at parse time

    defaults = TrackerConfig()
    p = groups.train.add_parser("track", help="train the TransCenter-style tracker on MOTChallenge, KITTI tracking "
                                              "or UA-DETRAC sequences (DATA/train, DATA/val)")
    p.add_argument("--model", default="transcenter_pvt_v2_b0", help="tracker, e.g. transcenter_pvt_v2_b2, or "
                                                                    "transcenter with --set model.backbone=...")
    p.add_argument("--data", required=True, help="folder with train/ and val/, each a MOTChallenge, KITTI tracking "
                                                 "or UA-DETRAC dataset")
    add_class_map_arg(p)
    add_config_args(p)
    p.add_argument("--out", default="runs/train_track", help="run folder (default runs/train_track)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--skip-bad", action="store_true", help="drop malformed gt rows (counted) instead of stopping")
    add_outside_root_arg(p)
    add_fine_tune_args(p)
    p.set_defaults(func=train)

    p = groups.verbs.add_parser("track", help="track objects in a video / frame folder / MOTChallenge sequence with "
                                              "a trained tracker or detector: MOTChallenge txt plus rendered frames")
    p.add_argument("source", metavar="VIDEO_OR_FRAMES")
    p.add_argument("--checkpoint", required=True, help="tracker (vistra train track) or detector (vistra train "
                                                       "detect): model.safetensors or its run folder")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--match-score", type=float, default=defaults.match_score,
                   help=f"detections below this score are ignored (default {defaults.match_score})")
    p.add_argument("--new-track-score", type=float, default=defaults.new_track_score,
                   help=f"unmatched detections from this score start a track (default {defaults.new_track_score})")
    p.add_argument("--max-age", type=int, default=defaults.max_age,
                   help=f"frames a lost track waits to be revived (default {defaults.max_age})")
    p.add_argument("--iou-gate", type=float, default=defaults.iou_gate,
                   help=f"smallest IoU between a track and its next box (default {defaults.iou_gate})")
    p.add_argument("--class-agnostic", action="store_true", help="link boxes across classes")
    p.add_argument("--class-score", action="append", default=[], metavar="CLASS=MATCH[,NEW]",
                   help="per-class match / new-track scores by class name or id, e.g. --class-score car=0.4,0.6 "
                        "(repeatable)")
    p.add_argument("--trail", type=int, default=20, help="trail length in frames on rendered frames (default 20)")
    p.add_argument("--no-render", action="store_true", help="write the results file only")
    p.add_argument("--results-format", choices=("mot", "kitti"), default="mot",
                   help="results file: MOTChallenge rows with the class id in column 8 (default), or KITTI "
                        "label_02 rows (class names must be KITTI types)")
    p.add_argument("--strict", action="store_true", help="stop at an unreadable frame instead of skipping it")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=track)

    p = groups.eval.add_parser("track", help="HOTA / CLEAR (MOTA) / Identity (IDF1) scores with TrackEval")
    p.add_argument("gt_root", metavar="GT_ROOT", help="ground truth: MOTChallenge sequences (<seq>/seqinfo.ini, "
                                                      "gt/gt.txt), KITTI tracking (label_02/) or UA-DETRAC (XML)")
    p.add_argument("results", metavar="RESULTS", help="folder of results files <seq>.txt (MOTChallenge rows with "
                                                      "the class id in column 8, or KITTI rows) or <seq>.xml")
    p.add_argument("--format", choices=("mot", "kitti", "detrac"), help="GT_ROOT's format (default: detected)")
    p.add_argument("--classes", type=lambda v: v.split(","), metavar="A,B",
                   help="classes to score (default: KITTI Car,Pedestrian; else every class)")
    add_class_map_arg(p)
    p.add_argument("--class-agnostic", action="store_true", help="score every class together as one")
    p.add_argument("--skip-bad", action="store_true", help="drop malformed rows (counted) instead of stopping")
    p.add_argument("--out", help="metrics JSON (default RESULTS/track_metrics.json)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of the table")
    p.set_defaults(func=evaluate)

    p = groups.make.add_parser("digits-mot", help="moving digits in MOTChallenge layout (OUT/train, OUT/val)")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--train", type=int, default=6, help="train sequences (default 6)")
    p.add_argument("--val", type=int, default=2, help="val sequences (default 2)")
    p.add_argument("--length", type=int, default=80, help="frames per sequence (default 80)")
    p.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"), help="frame size (320 240)")
    p.add_argument("--digit-size", type=int, nargs=2, default=(24, 48), metavar=("MIN", "MAX"),
                   help="digit size range in pixels (default 24 48)")
    p.add_argument("--max-objects", type=int, default=8, help="at most this many digits per sequence (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=make_digits_mot)

    p = groups.make.add_parser("digits-traffic", help="moving digits standing for Car / Pedestrian / Cyclist, "
                                                      "KITTI-tracking layout with DontCare regions (OUT/train, OUT/val)")
    p.add_argument("out", metavar="OUT")
    p.add_argument("--train", type=int, default=6, help="train sequences (default 6)")
    p.add_argument("--val", type=int, default=2, help="val sequences (default 2)")
    p.add_argument("--length", type=int, default=60, help="frames per sequence (default 60)")
    p.add_argument("--size", type=int, nargs=2, default=(320, 240), metavar=("W", "H"), help="frame size (320 240)")
    p.add_argument("--digit-size", type=int, nargs=2, default=(24, 48), metavar=("MIN", "MAX"),
                   help="digit size range in pixels (default 24 48)")
    p.add_argument("--max-objects", type=int, default=8, help="at most this many moving digits (default 8)")
    p.add_argument("--dontcare", type=float, default=0.5, help="share of sequences with a DontCare region (0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=make_digits_traffic)

    if groups.data is not None:
        p = groups.data.add_parser("convert", help="convert a tracking dataset between MOTChallenge, KITTI tracking "
                                                   "and UA-DETRAC, or to COCO json (frames as images)")
        p.add_argument("src", metavar="SRC", help="dataset folder, or a folder of splits (train/, val/) in one format")
        p.add_argument("dst", metavar="DST", help="new folder")
        p.add_argument("--to", required=True, choices=("mot", "kitti", "detrac", "coco"))
        p.add_argument("--from", dest="format", choices=("mot", "kitti", "detrac"), help="SRC's format "
                                                                                         "(default: detected)")
        add_class_map_arg(p)
        p.add_argument("--split", help="COCO split name for a single dataset (default train)")
        p.add_argument("--copy", action="store_true", help="copy the frames (default: hard links where possible)")
        p.add_argument("--skip-bad", action="store_true", help="drop malformed rows (counted) instead of stopping")
        p.set_defaults(func=convert)


def train(args: argparse.Namespace) -> int:
    from vistra.detection.commands import gather_settings  # the flat-key settings every task's CLI reads
    from vistra.tracking.recipe import train_track

    overrides = gather_settings(args.config, args.set, {"skip_bad": True if args.skip_bad else None,
                                                        "backbone_weights": args.backbone_weights,
                                                        "init_weights": args.init_weights,
                                                        "allow_outside_root": True if args.allow_outside_root
                                                        else None,
                                                        "class_map": args.class_map})
    result = train_track(args.model, args.data, args.out, overrides, resume=args.resume)
    m = result["metrics"]
    scores = ", ".join(f"{k} {pct(100 * m[k])}" for k in ("HOTA", "MOTA", "IDF1") if k in m)
    print(f"trained {args.model}: {scores or 'no val split'}; model saved to {result['weights']}")
    return 0


def track(args: argparse.Namespace) -> int:
    from vistra.tracking.by_detection import detector_from_checkpoint, track_to_folder
    from vistra.tracking.by_model import load_center_tracking
    from vistra.tracking.config import TrackerConfig, parse_class_scores, split_class_score
    from vistra.trained import task_of

    config = TrackerConfig(match_score=args.match_score, new_track_score=args.new_track_score,
                           max_age=args.max_age, iou_gate=args.iou_gate, class_agnostic=args.class_agnostic)
    threshold = min([config.lowest_score(), *(split_class_score(v)[1] for v in args.class_score)])
    if task_of(args.checkpoint) == "track":
        detector, info = load_center_tracking(args.checkpoint, args.device, score_threshold=threshold)
        info = {**info, "classes": dict(zip(info.get("class_ids") or [1], info["classes"]))}
    else:
        detector, info = detector_from_checkpoint(args.checkpoint, args.device, score_threshold=threshold)
    config.class_scores = parse_class_scores(args.class_score, info.get("classes"), config)
    summary = track_to_folder(args.source, detector, args.out, config, info.get("classes"), render=not args.no_render,
                              trail=args.trail, skip_bad=not args.strict, results_format=args.results_format)
    if summary["skipped"]:
        print_skipped(summary["skipped"], "unreadable frame(s)")
    for problem in summary["problems"]:
        print(f"warning: {problem}")
    if summary["gaps"]:
        print(f"warning: {len(summary['gaps'])} gap(s) in the frame numbers, first after frame "
              f"{summary['gaps'][0][0]}")
    rendered = f"; frames drawn in {summary['frames_dir']}" if summary["frames_dir"] else ""
    print(f"tracked {summary['tracks']} objects over {summary['frames']} frames of {summary['name']} "
          f"({summary['fps']:.1f} frames/s); wrote {summary['results']}{rendered}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from vistra.tracking.evaluate import METRICS_FILE, evaluate_tracking, format_table

    out = Path(args.out) if args.out else Path(args.results) / METRICS_FILE
    report = evaluate_tracking(args.gt_root, args.results, class_agnostic=args.class_agnostic,
                               skip_bad=args.skip_bad, out_json=out, format=args.format, class_map=args.class_map,
                               classes=args.classes)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_table(report))
    if args.skip_bad:
        print_skipped(report["skipped"], "malformed row(s)")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0


def convert(args: argparse.Namespace) -> int:
    from vistra.tracking.convert import convert_dataset

    summary = convert_dataset(args.src, args.dst, args.to, format=args.format, class_map=args.class_map,
                              skip_bad=args.skip_bad, split=args.split, copy=args.copy)
    if args.skip_bad:
        print_skipped(summary["skipped"], "malformed row(s)")
    for note in summary["notes"]:
        print(f"note: {note}")
    for split, c in summary["splits"].items():
        where = Path(summary["dst"]) / split if args.to != "coco" else Path(summary["dst"])
        print(f"converted {c['sequences']} sequence(s) ({c['frames']} frames, {c['boxes']} boxes, "
              f"{c['ignore_regions']} ignore regions) from {summary['format']} to {args.to}: {where}")
    return 0


def make_digits_mot(args: argparse.Namespace) -> int:
    from vistra.data.digits_mot import make_digits_mot as make

    summary = make(args.out, n_train=args.train, n_val=args.val, length=args.length, size=tuple(args.size),
                   digit_size=tuple(args.digit_size), max_objects=args.max_objects, seed=args.seed)
    print(f"wrote digits-mot to {summary['out_dir']}: {len(summary['sequences']['train'])} train and "
          f"{len(summary['sequences']['val'])} val sequences of {args.length} frames "
          f"({summary['boxes']['train']} and {summary['boxes']['val']} boxes); score results with "
          f"`vistra eval track {Path(summary['out_dir']) / 'val'} RESULTS`")
    return 0


def make_digits_traffic(args: argparse.Namespace) -> int:
    from vistra.data.digits_traffic import make_digits_traffic as make

    summary = make(args.out, n_train=args.train, n_val=args.val, length=args.length, size=tuple(args.size),
                   digit_size=tuple(args.digit_size), max_objects=args.max_objects, dontcare=args.dontcare,
                   seed=args.seed)
    print(f"wrote digits-traffic to {summary['out_dir']} (KITTI tracking layout): "
          f"{len(summary['sequences']['train'])} train and {len(summary['sequences']['val'])} val sequences of "
          f"{args.length} frames ({summary['boxes']['train']} and {summary['boxes']['val']} boxes, "
          f"{summary['dontcare']['train']} and {summary['dontcare']['val']} with DontCare regions); score results "
          f"with `vistra eval track {Path(summary['out_dir']) / 'val'} RESULTS --classes Car,Pedestrian,Cyclist`")
    return 0


def predict(args: argparse.Namespace) -> int:
    """`vistra predict` with a tracking checkpoint: trackers need a sequence, so point to `vistra track`."""
    raise ValueError(f"{args.checkpoint}: is a tracking model, which works on frame sequences; run "
                     f"`vistra track VIDEO_OR_FRAMES --checkpoint {args.checkpoint}`")
