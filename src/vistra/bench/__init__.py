"""Benchmarks to run on your own hardware, CPU or CUDA: `vistra bench [NAMES...] [--quick] [--device cuda]`.

Each entry of BENCHMARKS names a module with ``run(argv) -> dict`` (its result, with a markdown "table" and
"notes"), run by `vistra bench` with the flags --quick, --device, --threads and --out, or on its own with
``python -m vistra.bench.<name> --help`` for every option. Comparisons against timm and transformers are made
when those packages are installed, and replaced by a note otherwise.
"""

# name -> (module, what it measures); modules are imported only when run
BENCHMARKS = {
    "backbones": ("vistra.bench.backbones", "ViT / PVT backbone inference, vs timm"),
    "detection": ("vistra.bench.detection", "DETR-R50 inference, training step and matcher, vs transformers"),
    "deform_attn": ("vistra.bench.deform_attn", "deformable attention op, and Deformable DETR vs transformers"),
    "segmentation": ("vistra.bench.segmentation", "segmentation presets: whole model and backbone alone"),
    "tracking": ("vistra.bench.tracking", "TransCenter tracking frames/s: model and association"),
    "compile": ("vistra.bench.compile", "inference latency: eager vs torch.compile vs onnxruntime"),
}

__all__ = ["BENCHMARKS"]
