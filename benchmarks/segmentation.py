"""Segmentation inference throughput: the benchmark vistra.bench.segmentation (also `vistra bench segmentation`),
run from the repository so that results land in benchmarks/results/segmentation.json.

    python benchmarks/segmentation.py                    # full run (a few minutes on 2 cores)
    python benchmarks/segmentation.py --quick            # smoke run
    python benchmarks/segmentation.py --models semfpn_pvt_v2_b0 --size 512 --rounds 5
"""
import sys
from pathlib import Path

from vistra.bench.segmentation import _settings, main, markdown_table, parse_args, run, summary  # noqa: F401

RESULTS = Path(__file__).resolve().parent / "results" / "segmentation.json"

if __name__ == "__main__":
    sys.exit(main(default_out=RESULTS))
