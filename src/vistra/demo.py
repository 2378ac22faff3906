"""`vistra demo`: build the built-in datasets, train small models on the CPU and write a report folder.

The demo is the list SECTIONS of task sections, run in order. A section is a function(DemoContext) ->
SectionResult living in its task's package; it writes its data under OUT/data, its training run under OUT/runs
and its figures into OUT/report, and returns a headline ("val top-1 98.3%"), its metrics, whether it met its
target, and a Markdown paragraph. OUT/report then gets metrics.json (every section's metrics, targets and
times) and report.md (a summary table, then each section's paragraph).

Adding a task: write `vistra/<task>/demo_section.py` with `def <task>_section(ctx) -> SectionResult` and add
one line to SECTIONS (and to NEEDS when it starts from another section's run). Sections run in `jobs` processes
at once (one torch thread each by default), a section only after the one it needs. The whole demo must stay
under 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import importlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
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


@dataclass(frozen=True)
class LazySection:
    """A section that imports `module` only when it runs (keeps `vistra demo --help` fast, avoids import cycles;
    being plain data, it also travels to the processes that run sections)."""

    module: str
    function: str

    def __call__(self, ctx: DemoContext) -> SectionResult:
        return getattr(importlib.import_module(self.module), self.function)(ctx)


# Task sections, reported in this order: (name, function(ctx) -> SectionResult).
SECTIONS: list[tuple[str, Section]] = [
    ("classification", LazySection("vistra.classification.demo_section", "classification_section")),
    ("segmentation", LazySection("vistra.segmentation.demo_section", "segmentation_section")),
    ("detection", LazySection("vistra.detection.demo_section", "detection_section")),
    ("tracking", LazySection("vistra.tracking.demo_section", "tracking_section")),
    ("traffic", LazySection("vistra.tracking.traffic_demo_section", "traffic_section")),
]
# Sections that start from another section's trained model: {section: the section it needs}.
NEEDS: dict[str, str] = {"detection": "segmentation", "traffic": "tracking"}


def default_jobs() -> int:
    """Sections run at once by default: 2, or 1 on a single-core machine."""
    return min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def run_demo(out: str | Path = "demo_out", epochs: int | None = None, only: Sequence[str] | None = None,
             threads: int | None = 1, jobs: int = 1) -> dict[str, Any]:
    """Run the sections (all, or those named in `only` plus the sections they need) into `out`; write
    out/report/{metrics.json, report.md} and print a summary line. `threads` is torch's CPU thread count in each
    section (None: leave it): the demo's small models run fastest on one thread, and unlike several threads, one
    is not slowed down many times over when other programs share the cores. `jobs` > 1 runs that many sections
    at once, each in its own process.

    Returns the content of metrics.json: {"sections": {name: metrics}, "headlines": {name: headline},
    "targets": {name: {"target", "passed"}}, "times_s": {name: seconds}, "total_time_s", "threads", "jobs"}.
    """
    names = _choose(only)
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    start = time.perf_counter()
    ctx = DemoContext(Path(out), epochs)
    ctx.report.mkdir(parents=True, exist_ok=True)
    if jobs > 1 and len(names) > 1:
        results = _run_parallel(names, ctx, threads, jobs)
    else:
        sections = dict(SECTIONS)
        ran = {name: run_section(name, sections[name], ctx, threads) for name in _dependency_order(names)}
        results = [ran[name] for name in names]
    total = time.perf_counter() - start
    metrics = {
        "sections": {r.name: r.metrics for r in results},
        "headlines": {r.name: r.headline for r in results},
        "targets": {r.name: {"target": r.target, "passed": r.passed} for r in results},
        "times_s": {r.name: round(r.time_s, 1) for r in results},
        "total_time_s": round(total, 1),
        "threads": threads,
        "jobs": jobs,
    }
    write_json_atomic(ctx.report / "metrics.json", metrics)
    write_text_atomic(ctx.report / "report.md", report_markdown(results, total, jobs))
    print(summary_line(results, total, ctx.report))
    return metrics


def report_markdown(results: Sequence[SectionResult], total: float, jobs: int = 1) -> str:
    """report.md: a table of every section's headline, target, verdict and time, then the sections' paragraphs."""
    at_once = f" ({jobs} sections at a time)" if jobs > 1 else ""
    lines = ["# vistra demo report", "", f"Total time: {total:.0f} s on the CPU{at_once}.", "",
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


def run_section(name: str, section: Section, ctx: DemoContext, threads: int | None = 1) -> SectionResult:
    """Run one section with `threads` torch threads (restored after), timed, with a start and an end line."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        print(f"[{name}] starting", flush=True)
        start = time.perf_counter()
        result = section(ctx)
        result.time_s = time.perf_counter() - start
        print(f"[{name}] {result.headline} in {result.time_s:.0f} s", flush=True)
        return result
    finally:
        torch.set_num_threads(previous)


def _run_parallel(names: list[str], ctx: DemoContext, threads: int | None, jobs: int) -> list[SectionResult]:
    """Run the sections in `jobs` fresh processes, each as soon as the section it needs is done; those that
    others need first. A section's error is raised here once the running ones have finished."""
    pending, running, done = list(names), {}, {}
    needed, sections = set(NEEDS.values()), dict(SECTIONS)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        while pending or running:
            busy = set(pending) | set(running.values())
            ready = sorted((n for n in pending if NEEDS.get(n) not in busy),
                           key=lambda n: (n not in needed, names.index(n)))
            for name in ready[: jobs - len(running)]:
                pending.remove(name)
                running[pool.submit(run_section, name, sections[name], ctx, threads)] = name
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                done[name] = _result_or_stop(future, pool, pending)
    return [done[name] for name in names]


def _result_or_stop(future: Future, pool: ProcessPoolExecutor, pending: list[str]) -> SectionResult:
    """The future's result; on a section's error, start nothing more and raise it."""
    try:
        return future.result()
    except BaseException:
        pending.clear()
        pool.shutdown(wait=True, cancel_futures=True)
        raise


def _dependency_order(names: list[str]) -> list[str]:
    """`names` reordered so that each section comes after the one it needs (otherwise as given)."""
    order: list[str] = []
    while len(order) < len(names):
        order.append(next(n for n in names if n not in order and (NEEDS.get(n) not in names or NEEDS[n] in order)))
    return order


def _choose(only: Sequence[str] | None) -> list[str]:
    """The sections to run, in SECTIONS order: all, or those in `only` and the sections they need."""
    known = [name for name, _ in SECTIONS]
    if not only:
        return known
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ValueError(f"unknown demo section(s) {', '.join(unknown)}; known: {', '.join(known)}")
    wanted = set(only)
    for name in list(wanted):
        while NEEDS.get(name):
            name = NEEDS[name]
            wanted.add(name)
    return [name for name in known if name in wanted]
