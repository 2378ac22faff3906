"""Multi-scale deformable attention, and Deformable DETR vs transformers: the benchmark vistra.bench.deform_attn
(also `vistra bench deform_attn`), run from the repository so that results land in
benchmarks/results/deform_attn.json.

    python benchmarks/deform_attn.py              # full run (about 5 minutes on 2 cores)
    python benchmarks/deform_attn.py --tiny       # smoke run on small shapes and a tiny model
"""
from pathlib import Path

from vistra.bench.deform_attn import (  # noqa: F401  (importable here)
    FULL_OP,
    TINY_OP,
    _measure_in_subprocess,
    bench_model,
    bench_op,
    main,
    measure_op,
    parse_args,
    run,
    table,
)

RESULTS = Path(__file__).resolve().parent / "results" / "deform_attn.json"

if __name__ == "__main__":
    main(default_out=RESULTS)
