"""`vistra export CHECKPOINT OUT.onnx --format onnx`: a trained model (or a registered name, random weights) ->
ONNX, then onnxruntime against PyTorch on the example input and on a second size.

CHECKPOINT is what the task commands write (model.safetensors, a run folder, last.pt / best.pt; the task is read
from the model's description), a foreign checkpoint with --model NAME, or a model name alone.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vistra.checkpoints.errors import CheckpointError

FORMATS = ("onnx",)
NAME_ONLY_SIZE = 224  # example side for a model given by name, when its config has no img_size


def run_export(checkpoint: str, out: str | os.PathLike, fmt: str = "onnx", size: tuple[int, int] | None = None,
               opset: int | None = None, model_name: str | None = None, with_mask: bool = False,
               dynamic: bool = True) -> dict[str, Any]:
    """Export, check with onnxruntime and print a summary; returns it as a dict (path, inputs, outputs, sizes,
    max_abs_diff per checked size). ValueError for bad input, including missing export packages."""
    from vistra.export import onnx as onnx_export
    from vistra.export.wrappers import example_inputs, round_size, wrap_for_export

    if fmt not in FORMATS:
        raise ValueError(f"--format {fmt!r} is not supported; formats: {', '.join(FORMATS)}")
    missing = onnx_export.missing_packages()
    if missing:
        raise ValueError(f"vistra export needs {', '.join(missing)}, which are not installed: "
                         f"{onnx_export.INSTALL_HINT}")
    model, name, source, default_size = load_for_export(checkpoint, model_name)
    wrapper = wrap_for_export(model, with_mask)
    m = wrapper.size_multiple
    want = tuple(size) if size else (default_size, default_size)
    example_size = round_size(want, m)
    if example_size != want:
        print(f"image size {want[0]}x{want[1]} rounded up to {example_size[0]}x{example_size[1]} "
              f"(this model takes multiples of {m})")
    generator = torch.Generator().manual_seed(0)
    inputs = example_inputs(wrapper, example_size, generator=generator)
    result = onnx_export.export_onnx(wrapper, out, inputs, dynamic=dynamic,
                                     opset=opset or onnx_export.DEFAULT_OPSET, with_mask=with_mask)
    checks = {"x".join(map(str, example_size)): onnx_export.check_onnx(result.path, wrapper, inputs)}
    if result.dynamic_size:  # the graph claims any size: show it on another one
        other = (example_size[0] + m, example_size[1] + 2 * m)
        batch = 2 if result.dynamic_batch else 1
        checks["x".join(map(str, other))] = onnx_export.check_onnx(
            result.path, wrapper, example_inputs(wrapper, other, batch, generator))
    _print_summary(result, name, source, checks)
    return {"path": str(result.path), "model": name, "source": source, "inputs": list(result.input_names),
            "outputs": list(result.output_names), "dynamic_batch": result.dynamic_batch,
            "dynamic_size": result.dynamic_size, "size_multiple": m, "note": result.note,
            "max_abs_diff": checks}


def load_for_export(checkpoint: str, model_name: str | None = None) -> tuple[nn.Module, str, str, int]:
    """CHECKPOINT -> (model in eval mode, model name, where its weights come from, default example side)."""
    from vistra.registry import create_model, list_models

    path = Path(checkpoint)
    if not path.exists():
        if checkpoint in list_models():
            model = create_model(checkpoint).eval()
            side = getattr(getattr(model, "config", None), "img_size", None) or NAME_ONLY_SIZE
            return model, checkpoint, "random weights", int(side)
        raise CheckpointError(f"{checkpoint}: neither a checkpoint file / run folder nor a registered model name")
    from vistra.trained import task_of

    task = task_of(path)
    if task is None and model_name is not None and _is_detector(model_name):
        task = "detect"
    if task == "detect":
        from vistra.detection.eval_predict import load_detector

        model, info = load_detector(path, model_name=model_name)
        recipe = info.get("recipe") or {}
        return model, info["model_name"], str(path), int(recipe.get("eval_size") or 800)
    if task == "segment":
        from vistra.segmentation.evaluate import load_segmenter

        model, info = load_segmenter(path)
        recipe = info.get("recipe") or {}
        return model, info["model_name"], str(path), int(recipe.get("crop_size") or 512)
    if task == "track":
        from vistra.tracking.by_model import load_center_tracking

        tracking, info = load_center_tracking(path, device="cpu")
        recipe = info.get("recipe") or {}
        return tracking.model.eval(), info["model_name"], str(path), int(recipe.get("eval_size") or 608)
    from vistra.classification.model_file import load_classifier

    model, cinfo = load_classifier(path, model_name)
    return model, cinfo.model_name, str(path), cinfo.img_size


def _is_detector(model_name: str) -> bool:
    from vistra.detection.recipe import register_detectors
    from vistra.export.wrappers import DETECTORS
    from vistra.registry import create_model

    register_detectors()
    return getattr(create_model(model_name), "arch", None) in DETECTORS


def _print_summary(result, name: str, source: str, checks: dict[str, float]) -> None:
    B = "B" if result.dynamic_batch else str(result.example_shape[0])
    H, W = ("H", "W") if result.dynamic_size else (str(d) for d in result.example_shape[-2:])
    shapes = [f"{n} ({B}, {H}, {W})" if n == "mask" else f"{n} ({B}, 3, {H}, {W})" for n in result.input_names]
    free = [f"{B} any" if result.dynamic_batch else "",
            f"H, W any multiples of {result.size_multiple}" if result.dynamic_size else ""]
    print(f"exported {name} ({source}) -> {result.path} (ONNX opset {result.opset})")
    print(f"  inputs: {', '.join(shapes)}{'; ' if any(free) else ''}{', '.join(f for f in free if f)}")
    print(f"  outputs: {', '.join(result.output_names)}")
    if result.note:
        print(f"  {result.note}")
    for shape, diff in checks.items():
        print(f"  onnxruntime vs PyTorch at {shape}: max |diff| {diff:.2e}")
