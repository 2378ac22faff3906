"""`vistra demo`: build the built-in datasets, train small models on the CPU and write a report folder.

The demo is the list SECTIONS of task sections, run in order. A section is a function(DemoContext) ->
SectionResult living in its task's package; it writes its data under OUT/data, its training run under OUT/runs
and its figures into OUT/report, and returns a headline ("val top-1 98.3%"), its metrics, whether it met its
target, and a Markdown paragraph. OUT/report then gets metrics.json (every section's metrics, targets and
times) and report.md (a summary table, then each section's paragraph).

Adding a task: write `vistra/<task>/demo_section.py` with `def <task>_section(ctx) -> SectionResult` and add
one line to SECTIONS. The whole demo must stay under 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vistra.atomic_io import write_json_atomic, write_text_atomic


@dataclass
class DemoContext:
    """Where a section writes: out/data/<dataset>, out/runs/<task>, out/report."""

    out: Path
    epochs: int | None = None  # override of every section's epochs (quick look; targets are then not checked)

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def report(self) -> Path:
        return self.out / "report"


@dataclass
class SectionResult:
    """What a section reports: a one-phrase headline for the summary table, metrics for metrics.json, its target
    in words and whether it was met (None when not checked), a Markdown paragraph and the figures it wrote into
    the report folder."""

    name: str
    headline: str  # e.g. "val top-1 98.33%"
    metrics: dict[str, Any]
    target: str  # e.g. "val top-1 >= 97%"
    passed: bool | None
    markdown: str
    files: list[str] = field(default_factory=list)
    time_s: float = 0.0  # filled in by run_demo


Section = Callable[[DemoContext], SectionResult]


def lazy(module: str, function: str) -> Section:
    """A section that imports `module` only when it runs (keeps `vistra demo --help` fast, avoids import cycles)."""
    def run(ctx: DemoContext) -> SectionResult:
        return getattr(importlib.import_module(module), function)(ctx)

    run.__name__ = function
    return run


# Task sections, run in order: (name, function(ctx) -> SectionResult).
SECTIONS: list[tuple[str, Section]] = [
    ("classification", lazy("vistra.classification.demo_section", "classification_section")),
    ("segmentation", lazy("vistra.segmentation.demo_section", "segmentation_section")),
    ("tracking", lazy("vistra.tracking.demo_section", "tracking_section")),
]


def run_demo(out: str | Path = "demo_out", epochs: int | None = None, only: Sequence[str] | None = None,
             threads: int | None = 1) -> dict[str, Any]:
    """Run the sections (all, or those named in `only`) into `out`; write out/report/{metrics.json, report.md}
    and print a summary line. `threads` is torch's CPU thread count meanwhile (None: leave it): the demo's
    small models run fastest on one thread, and unlike several threads, one is not slowed down many times over
    when other programs share the cores.

    Returns the content of metrics.json: {"sections": {name: metrics}, "headlines": {name: headline},
    "targets": {name: {"target", "passed"}}, "times_s": {name: seconds}, "total_time_s", "threads"}.
    """
    import torch

    chosen = _choose(only)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    start = time.perf_counter()
    ctx = DemoContext(Path(out), epochs)
    ctx.report.mkdir(parents=True, exist_ok=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    results = []
    try:
        for name, section in chosen:
            print(f"[{name}] starting")
            section_start = time.perf_counter()
            result = section(ctx)
            result.time_s = time.perf_counter() - section_start
            print(f"[{name}] {result.headline} in {result.time_s:.0f} s")
            results.append(result)
    finally:
        torch.set_num_threads(previous)
    total = time.perf_counter() - start
    metrics = {
        "sections": {r.name: r.metrics for r in results},
        "headlines": {r.name: r.headline for r in results},
        "targets": {r.name: {"target": r.target, "passed": r.passed} for r in results},
        "times_s": {r.name: round(r.time_s, 1) for r in results},
        "total_time_s": round(total, 1),
        "threads": threads or previous,
    }
    write_json_atomic(ctx.report / "metrics.json", metrics)
    write_text_atomic(ctx.report / "report.md", report_markdown(results, total))
    print(summary_line(results, total, ctx.report))
    return metrics


def report_markdown(results: Sequence[SectionResult], total: float) -> str:
    """report.md: a table of every section's headline, target, verdict and time, then the sections' paragraphs."""
    lines = ["# vistra demo report", "", f"Total time: {total:.0f} s on the CPU.", "",
             "| task | result | target | met | time |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.headline} | {r.target} | {_VERDICT_SHORT[r.passed]} | {r.time_s:.0f} s |")
    return "\n".join(lines) + "\n\n" + "\n".join(r.markdown for r in results)


def summary_line(results: Sequence[SectionResult], total: float, report: Path) -> str:
    """One line: each section's headline and whether it met its target, the time, the report path."""
    parts = [f"{r.name} {r.headline} ({r.target}: {_VERDICT[r.passed]})" for r in results]
    return f"vistra demo: {'; '.join(parts)}; {total / 60:.1f} min; report in {report}"


_VERDICT = {True: "target met", False: "TARGET MISSED", None: "target not checked"}
_VERDICT_SHORT = {True: "yes", False: "NO", None: "not checked"}


def _choose(only: Sequence[str] | None) -> list[tuple[str, Section]]:
    if not only:
        return list(SECTIONS)
    known = [name for name, _ in SECTIONS]
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ValueError(f"unknown demo section(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [(name, section) for name, section in SECTIONS if name in only]
