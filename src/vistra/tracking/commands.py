"""Tracking's command-line verbs: `vistra train track` (the TransCenter-style tracker), `vistra track SOURCE
--checkpoint C` (with a tracker, or any detector: tracking by detection), `vistra eval track GT_ROOT RESULTS`
(HOTA / MOTA / IDF1) and `vistra data make digits-mot OUT`.
Heavy imports happen inside the handlers, after parsing."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vistra.cli_common import CommandGroups, add_config_args, pct, print_skipped

DEFAULT_OUT = "runs/track"


def add_commands(groups: CommandGroups) -> None:
    """Add tracking's sub-commands to the `vistra` parser."""
    from vistra.tracking.config import TrackerConfig  # a plain dataclass: cheap at parse time

    defaults = TrackerConfig()
    p = groups.train.add_parser("track", help="train the TransCenter-style tracker on MOTChallenge sequences "
                                              "(DATA/train, DATA/val)")
    p.add_argument("--model", default="transcenter_pvt_v2_b0", help="tracker, e.g. transcenter_pvt_v2_b2, or "
                                                                    "transcenter with --set model.backbone=...")
    p.add_argument("--data", required=True, help="folder with train/ and val/ MOTChallenge sequences")
    add_config_args(p)
    p.add_argument("--out", default="runs/train_track", help="run folder (default runs/train_track)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--skip-bad", action="store_true", help="drop malformed gt rows (counted) instead of stopping")
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
    p.add_argument("--trail", type=int, default=20, help="trail length in frames on rendered frames (default 20)")
    p.add_argument("--no-render", action="store_true", help="write the results file only")
    p.add_argument("--strict", action="store_true", help="stop at an unreadable frame instead of skipping it")
    p.add_argument("--device", default="auto", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=track)

    p = groups.eval.add_parser("track", help="HOTA / CLEAR (MOTA) / Identity (IDF1) scores with TrackEval")
    p.add_argument("gt_root", metavar="GT_ROOT", help="folder of MOTChallenge sequences (<seq>/seqinfo.ini, gt/gt.txt)")
    p.add_argument("results", metavar="RESULTS", help="folder of results files <seq>.txt")
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


def train(args: argparse.Namespace) -> int:
    from vistra.detection.commands import gather_settings  # the flat-key settings every task's CLI reads
    from vistra.tracking.recipe import train_track

    overrides = gather_settings(args.config, args.set, {"skip_bad": True if args.skip_bad else None})
    result = train_track(args.model, args.data, args.out, overrides, resume=args.resume)
    m = result["metrics"]
    scores = ", ".join(f"{k} {pct(100 * m[k])}" for k in ("HOTA", "MOTA", "IDF1") if k in m)
    print(f"trained {args.model}: {scores or 'no val split'}; model saved to {result['weights']}")
    return 0


def track(args: argparse.Namespace) -> int:
    from vistra.tracking.by_detection import detector_from_checkpoint, track_to_folder
    from vistra.tracking.by_model import load_center_tracking
    from vistra.tracking.config import TrackerConfig
    from vistra.trained import task_of

    config = TrackerConfig(match_score=args.match_score, new_track_score=args.new_track_score,
                           max_age=args.max_age, iou_gate=args.iou_gate, class_agnostic=args.class_agnostic)
    threshold = min(args.match_score, args.new_track_score)
    if task_of(args.checkpoint) == "track":
        detector, info = load_center_tracking(args.checkpoint, args.device, score_threshold=threshold)
        info = {**info, "classes": dict(zip(info.get("class_ids") or [1], info["classes"]))}
    else:
        detector, info = detector_from_checkpoint(args.checkpoint, args.device, score_threshold=threshold)
    summary = track_to_folder(args.source, detector, args.out, config, info.get("classes"), render=not args.no_render,
                              trail=args.trail, skip_bad=not args.strict)
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
                               skip_bad=args.skip_bad, out_json=out)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(format_table(report))
    if args.skip_bad:
        print_skipped(report["skipped"], "malformed row(s)")
    print(f"wrote {out}")
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


def predict(args: argparse.Namespace) -> int:
    """`vistra predict` with a tracking checkpoint: trackers need a sequence, so point to `vistra track`."""
    raise ValueError(f"{args.checkpoint}: is a tracking model, which works on frame sequences; run "
                     f"`vistra track VIDEO_OR_FRAMES --checkpoint {args.checkpoint}`")
