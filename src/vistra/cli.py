"""The `vistra` command: parse arguments, call the task module, turn expected errors into one line.

Sub-commands: train TASK, eval TASK, predict, data make DATASET, convert, export, demo, bench; each task module in
TASK_MODULES adds its own. Heavy modules (torch, the models, the tasks) are imported inside the command functions,
after parsing.
Bad input (DataError, CheckpointError, UnknownModelError, a missing file, a bad config value) is printed as
`vistra: error: <message>` with exit status 2; set VISTRA_DEBUG=1 to see the traceback too.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from vistra.cli_common import CommandGroups

EXIT_USER_ERROR = 2


# Task modules; each has add_commands(CommandGroups) and, for `vistra predict`, predict(args).
TASK_MODULES = {
    "classify": "vistra.classification.commands",
    "segment": "vistra.segmentation.commands",
    "detect": "vistra.detection.commands",
    "track": "vistra.tracking.commands",
}


# ------------------------------------------------------------------------------------------- commands
def cmd_predict(args: argparse.Namespace) -> int:
    """Hand the images to the module of the task the checkpoint was trained for (classifiers by default)."""
    import importlib

    from vistra.trained import task_of

    task = task_of(args.checkpoint) or "classify"  # bare foreign checkpoints: a classifier named by --model
    if task not in TASK_MODULES:
        raise ValueError(f"{args.checkpoint}: holds a {task} model, which `vistra predict` cannot run")
    return importlib.import_module(TASK_MODULES[task]).predict(args)


def cmd_convert(args: argparse.Namespace) -> int:
    from vistra.cli_convert import run_convert

    run_convert(args.src, args.dst, args.model)  # prints its own summary line
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vistra.cli_export import run_export

    run_export(args.checkpoint, args.out, args.format, size=args.size, opset=args.opset, model_name=args.model,
               with_mask=args.mask, dynamic=not args.static)  # prints its own summary
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vistra.demo import default_jobs, run_demo

    metrics = run_demo(args.out, epochs=args.epochs, only=args.only, threads=args.threads,
                       jobs=args.jobs or default_jobs())
    missed = [f"{name} ({t['target']})" for name, t in metrics["targets"].items() if t["passed"] is False]
    if missed:
        print(f"vistra: demo missed its target in {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


# -------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="vistra", description="Vision transformers: train, evaluate, predict, demo.")
    parser.add_argument("--version", action="version", version=f"vistra {_version()}")
    verbs = parser.add_subparsers(dest="verb", metavar="COMMAND", required=True)
    train = verbs.add_parser("train", help="train a model").add_subparsers(dest="task", metavar="TASK", required=True)
    evaluate = verbs.add_parser("eval", help="evaluate a trained model").add_subparsers(
        dest="task", metavar="TASK", required=True)
    data = verbs.add_parser("data", help="built-in datasets").add_subparsers(dest="action", metavar="ACTION",
                                                                              required=True)
    make = data.add_parser("make", help="write a built-in dataset").add_subparsers(dest="dataset", metavar="DATASET",
                                                                                  required=True)

    predict = verbs.add_parser("predict", help="run a trained model on images: JSON results plus rendered PNGs")
    predict.add_argument("images", nargs="+", metavar="IMAGE")
    predict.add_argument("--checkpoint", required=True, help="model.safetensors, a run folder, or last.pt / best.pt")
    predict.add_argument("--model", help="model name, for checkpoints that do not record it")
    predict.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    predict.add_argument("--json", action="store_true", help="print the JSON report instead of one line per image")
    predict.set_defaults(func=cmd_predict)

    groups = CommandGroups(verbs=verbs, train=train, eval=evaluate, make=make, predict=predict, data=data)
    for module in TASK_MODULES.values():
        importlib.import_module(module).add_commands(groups)
    importlib.import_module("vistra.bench.commands").add_commands(groups)  # vistra bench

    p = verbs.add_parser("convert", help="convert an official / timm / Hugging Face checkpoint to vistra safetensors")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST")
    p.add_argument("--model", required=True, help="the vistra model the checkpoint is for")
    p.set_defaults(func=cmd_convert)

    p = verbs.add_parser("export", help="export a trained model (or a model name, random weights) to ONNX and "
                                        "check it with onnxruntime")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="model.safetensors, a run folder, last.pt / best.pt, "
                                                            "a foreign checkpoint with --model, or a model name")
    p.add_argument("out", metavar="OUT", help="the .onnx file to write")
    p.add_argument("--format", default="onnx", choices=["onnx"], help="export format (default onnx)")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"),
                   help="example image size (default: the model's training / eval size); the graph takes any size "
                        "where the model allows it")
    p.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    p.add_argument("--model", help="model name, for checkpoints that do not record it")
    p.add_argument("--mask", action="store_true", help="detectors: add the padding-mask input (B, H, W) bool")
    p.add_argument("--static", action="store_true", help="fix the batch and image size to the example's")
    p.set_defaults(func=cmd_export)

    p = verbs.add_parser("demo", help="build the built-in data, train small models and write a report")
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--epochs", type=int, help="override the number of training epochs (for a quick look; targets "
                                              "are then not checked)")
    p.add_argument("--only", nargs="+", metavar="SECTION", help="run only these sections, e.g. classification")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1: the small demo models "
                                                          "train fastest on one, even on a busy machine)")
    p.add_argument("--jobs", type=int, help="sections trained at once, each in its own process (default 2, or 1 "
                                            "on a single core)")
    p.set_defaults(func=cmd_demo)
    return parser


# ---------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default sys.argv[1:]); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, usage errors
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USER_ERROR
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("vistra: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (sorted below into user errors and bugs)
        if not _is_user_error(err):
            raise
        if os.environ.get("VISTRA_DEBUG"):
            import traceback

            traceback.print_exc()
        print(f"vistra: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_USER_ERROR


def _is_user_error(err: BaseException) -> bool:
    """Errors caused by the user's input (files, names, config values), not by a bug."""
    from vistra.checkpoints.errors import CheckpointError
    from vistra.data.errors import DataError
    from vistra.engine.errors import TrainingDiverged

    expected: tuple[type[BaseException], ...] = (
        DataError, CheckpointError, TrainingDiverged, ValueError, FileNotFoundError, NotADirectoryError,
        IsADirectoryError, PermissionError, FileExistsError,
    )  # UnknownModelError is a ValueError
    return isinstance(err, expected)


def _one_line(err: BaseException) -> str:
    """The error's message on one line; for errors re-raised from DataLoader workers, the original message."""
    text = " ".join(str(err).split()) or type(err).__name__
    marker = f"{type(err).__name__}: "
    if "Original Traceback" in text and marker in text:  # DataLoader worker: keep the worker's own message
        text = text.rsplit(marker, 1)[1]
    return text


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("vistra")
    except Exception:  # noqa: BLE001  (not installed: running from a source tree)
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
