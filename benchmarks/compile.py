"""Inference latency, eager vs torch.compile vs onnxruntime: the benchmark vistra.bench.compile (also `vistra bench
compile`), run from the repository so that results land in benchmarks/results/compile.json.

    python benchmarks/compile.py                         # vit_small_patch16_224 and detr_resnet50, 2 threads
    python benchmarks/compile.py --quick                 # smoke run
"""
import sys
from pathlib import Path

from vistra.bench.compile import main, parse_args, run, summary, table  # noqa: F401  (importable here)

RESULTS = Path(__file__).resolve().parent / "results" / "compile.json"

if __name__ == "__main__":
    sys.exit(main(default_out=RESULTS))
