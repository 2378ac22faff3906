"""DETR-R50, vistra vs transformers: the benchmark vistra.bench.detection (also `vistra bench detection`), run
from the repository so that results land in benchmarks/results/detection.json.

    python benchmarks/detection.py                 # full run (about 10 minutes on 2 busy cores)
    python benchmarks/detection.py --quick         # smoke run: tiny images and model, 1 round
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from vistra.bench.detection import main, markdown_table, parse_args, run, summary  # noqa: E402,F401

RESULTS = Path(__file__).resolve().parent / "results" / "detection.json"

if __name__ == "__main__":
    sys.exit(main(default_out=RESULTS))
