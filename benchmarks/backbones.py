"""Backbone inference throughput, vistra vs timm: the benchmark vistra.bench.backbones (also `vistra bench
backbones`), run from the repository so that results land in benchmarks/results/backbones.json.

    python benchmarks/backbones.py                       # full run (about 5 minutes on 2 cores)
    python benchmarks/backbones.py --quick               # smoke run
    python benchmarks/backbones.py --models pvt_v2_b0 --batches 1 8 --rounds 9 --device cuda
"""
import sys
from pathlib import Path

from vistra.bench.backbones import main, markdown_table, parse_args, run, summary  # noqa: F401  (importable here)

RESULTS = Path(__file__).resolve().parent / "results" / "backbones.json"

if __name__ == "__main__":
    sys.exit(main(default_out=RESULTS))
