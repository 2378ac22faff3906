"""Tracking throughput: the benchmark vistra.bench.tracking (also `vistra bench tracking`), run from the repository
so that results land in benchmarks/results/tracking.json.

    python benchmarks/tracking.py                 # 640x1088 (MOT17's training size) and the demo's 120x160
    python benchmarks/tracking.py --tiny          # smoke run
"""
from pathlib import Path

from vistra.bench.tracking import main, measure, parse_args, run, table  # noqa: F401  (importable here)

RESULTS = Path(__file__).resolve().parent / "results" / "tracking.json"

if __name__ == "__main__":
    main(default_out=RESULTS)
