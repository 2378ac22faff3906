"""Pieces the task command modules share: the parser groups they add to, config flags, output helpers."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class CommandGroups:
    """Where a task module adds its sub-commands: `vistra train TASK`, `vistra eval TASK`,
    `vistra data make DATASET`, `vistra data ACTION` (data, e.g. convert), top-level verbs, and options of the
    shared `vistra predict`."""

    verbs: argparse._SubParsersAction
    train: argparse._SubParsersAction
    eval: argparse._SubParsersAction
    make: argparse._SubParsersAction
    predict: argparse.ArgumentParser
    data: argparse._SubParsersAction | None = None


def add_config_args(p: argparse.ArgumentParser) -> None:
    """--config YAML and --set KEY=VALUE overrides; --compile, short for --set train.compile=true."""
    p.add_argument("--config", metavar="YAML", help="config file; its values override the defaults")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-3 aug.hflip=0 (applied last)")
    p.add_argument("--compile", dest="set", action="append_const", const="train.compile=true",
                   help="run the training steps through torch.compile (inductor; pick another backend with "
                        "--set train.compile_backend=aot_eager)")


def add_fine_tune_args(p: argparse.ArgumentParser) -> None:
    """--init-weights FILE (a whole trained model) and --backbone-weights FILE (a pretrained backbone)."""
    p.add_argument("--init-weights", metavar="FILE",
                   help="start from a trained model (vistra run folder or weights file, official DETR / Deformable "
                        "DETR / TransCenter file): every tensor of matching name and shape loads, the rest (e.g. a "
                        "classifier for other classes) starts fresh and is listed")
    p.add_argument("--backbone-weights", metavar="FILE",
                   help="ImageNet (or detector) checkpoint loaded into the backbone only, any supported format "
                        "(official PVT / PVTv2, timm, Hugging Face, torchvision); the heads start fresh")


def add_outside_root_arg(p: argparse.ArgumentParser) -> None:
    """--allow-outside-root: accept dataset paths that leave the dataset folder (refused by default)."""
    p.add_argument("--allow-outside-root", action="store_true",
                   help="accept image paths in the annotations that leave the dataset folder (absolute, or climbing "
                        "out with ..); refused by default")


def print_skipped(files: Sequence[str], what: str = "unreadable image file(s)") -> None:
    """One summary line of skipped inputs, listing the first ten."""
    shown = "".join(f"\n  {f}" for f in files[:10]) + (f"\n  ... ({len(files)} in all)" if len(files) > 10 else "")
    print(f"skipped {len(files)} {what}{':' if files else ''}{shown}")


def pct(value: float | None) -> str:
    """A percentage for one-line summaries; n/a when missing."""
    return "n/a" if value is None else f"{value:.2f}%"
