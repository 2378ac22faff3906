"""Per-epoch metrics on disk: a JSON-lines file and a PNG of the curves.

Plotting uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), imported
only when a plot is drawn.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vistra.atomic_io import atomic_path, write_text_atomic

# History keys that are bookkeeping, not curves.
_NOT_CURVES = ("epoch", "lr", "epoch_time_s")
_RAW_PREFIX = "raw_"


class MetricsLog:
    """Writes `metrics.jsonl` (one JSON object per epoch) and `curves.png` in `out_dir`."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.jsonl_path = self.out_dir / "metrics.jsonl"
        self.png_path = self.out_dir / "curves.png"

    def rewrite(self, history: Sequence[dict[str, Any]]) -> None:
        """Replace metrics.jsonl by `history` (a fresh run writes an empty file; a resumed one its history)."""
        write_text_atomic(self.jsonl_path, "".join(json.dumps(record) + "\n" for record in history))

    def append(self, record: dict[str, Any]) -> None:
        """Add one epoch's record as a line (the file is replaced atomically: a crash leaves no half line)."""
        old = self.jsonl_path.read_text() if self.jsonl_path.is_file() else ""
        write_text_atomic(self.jsonl_path, old + json.dumps(record) + "\n")

    def plot(self, history: Sequence[dict[str, Any]]) -> None:
        """Redraw curves.png from the whole history."""
        plot_curves(history, self.png_path)


def curve_names(history: Sequence[dict[str, Any]]) -> list[str]:
    """Names that get a panel: train_loss, then every eval metric (raw_* share their metric's panel)."""
    names: list[str] = ["train_loss"] if any("train_loss" in r for r in history) else []
    for record in history:
        for key in record:
            if key in names or key in _NOT_CURVES or key.startswith("train_"):
                continue
            if key.startswith(_RAW_PREFIX) and any(key[len(_RAW_PREFIX) :] in r for r in history):
                continue
            names.append(key)
    return names


def plot_curves(history: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Draw train loss and each eval metric against epoch into a PNG at `path` (replaced atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    names = curve_names(history)
    if not names:
        return
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    figure = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        has_raw = any(_RAW_PREFIX + name in r for r in history)
        main_label = f"{name} (EMA model)" if has_raw else name
        for key, label in ((name, main_label), (_RAW_PREFIX + name, f"{name} (raw model)")):
            points = [(r["epoch"], r[key]) for r in history if key in r]
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if has_raw:
            ax.legend()
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    with atomic_path(path) as temp:
        figure.savefig(temp, dpi=100, format="png")
