"""ONNX export of vistra models, with dynamic batch and image size, and the onnxruntime check of the result.

    from vistra.export import export_onnx, check_onnx, example_inputs, wrap_for_export
    wrapper = wrap_for_export(model)                           # plain tensors in and out (wrappers.py)
    result = export_onnx(wrapper, "model.onnx", example_inputs(wrapper, (224, 224)))
    check_onnx(result.path, wrapper, example_inputs(wrapper, (256, 320), batch=3))   # -> max |diff|

Exporter: torch.export (dynamo=True in torch.onnx.export), pinned on purpose. The TorchScript exporter
(dynamo=False) is deprecated in torch 2.9+ and traces sizes as constants wherever Python arithmetic touches
them (ViT's position-embedding resize, Deformable DETR's per-level shapes), so its graphs fail at any other
image size. torch.export keeps sizes symbolic through that arithmetic. The graph is captured here with
torch.export.export(strict=False) and handed to the ONNX translator, rather than letting torch.onnx.export
capture it: its fallback capture strategies can silently return a graph specialised to the example's size.

Dynamic size: batch, height and width are free; the sides are declared as multiples of the wrapper's
size_multiple (32, or a ViT's patch size). After capture the graph is run at a second size; when the model
fixed a size on the way (a guard fails) the export is redone with the image size fixed (batch still free),
or fully fixed, and `OnnxExport.note` says why. Deformable attention runs its grid_sample reference path while
exporting (ONNX GridSample; the fast and native paths have no ONNX form).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vistra.export.wrappers import ExportWrapper, wrap_for_export
from vistra.layers.deform_attn import override_impl

# Opset 18: the lowest the torch.export-based exporter implements without version conversion; it has
# GridSample (16+, deformable attention) and antialiased Resize (18+, ViT's bicubic position-embedding resize).
DEFAULT_OPSET = 18
MIN_OPSET, MAX_OPSET = 18, 23
EXPORT_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
INSTALL_HINT = "pip install vistra[export]"
# Above this many bytes of weights the ONNX file keeps them in a side file (OUT.onnx.data): protobuf's limit is 2 GB.
EXTERNAL_DATA_BYTES = 1 << 30


@dataclass
class OnnxExport:
    """What export_onnx wrote: the file, its named inputs and outputs, and which sizes it accepts.

    dynamic_batch / dynamic_size: whether the batch and the image height and width are free (sides must then be
    multiples of size_multiple); otherwise they are those of example_shape. note: why a size is fixed, if one is.
    """

    path: Path
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example_shape: tuple[int, ...]
    size_multiple: int
    dynamic_batch: bool
    dynamic_size: bool
    opset: int
    note: str | None = None


def missing_packages() -> list[str]:
    """The packages of the `export` extra that cannot be imported."""
    missing = []
    for name in EXPORT_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def require_onnx() -> None:
    """ModuleNotFoundError naming the missing packages and how to install them, when any is missing."""
    missing = missing_packages()
    if missing:
        raise ModuleNotFoundError(f"ONNX export needs {', '.join(missing)}, which are not installed: {INSTALL_HINT}")


def export_onnx(model: nn.Module, path: str | Path, example_inputs: tuple[torch.Tensor, ...], dynamic: bool = True,
                opset: int = DEFAULT_OPSET, with_mask: bool = False) -> OnnxExport:
    """Write `model` (a vistra model or an ExportWrapper) as an ONNX file at `path`, traced on example_inputs.

    Args:
        model: wrapped with wrap_for_export (its inputs / outputs are the wrapper's names).
        example_inputs: one tensor per wrapper input, e.g. from wrappers.example_inputs.
        dynamic: free batch and image size where the model allows it (see the module docstring); False fixes both
            to the example's.
        opset: ONNX opset, MIN_OPSET to MAX_OPSET.
        with_mask: detectors: add the padding-mask input.
    Returns:
        OnnxExport. The model's train / eval modes are restored afterwards; it is exported in eval mode.
    """
    require_onnx()
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported: use {MIN_OPSET} to {MAX_OPSET} (GridSample needs 16, "
                         f"the exporter implements {MIN_OPSET} and later)")
    wrapper = wrap_for_export(model, with_mask)
    inputs = tuple(example_inputs)
    if len(inputs) != len(wrapper.input_names):
        raise ValueError(f"{type(wrapper).__name__} takes {len(wrapper.input_names)} inputs "
                         f"({', '.join(wrapper.input_names)}), got {len(inputs)} example tensors")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    external = sum(t.numel() * t.element_size() for t in wrapper.state_dict().values()) > EXTERNAL_DATA_BYTES
    modes = [(m, m.training) for m in wrapper.modules()]
    wrapper.eval()
    try:
        with torch.no_grad(), override_impl(wrapper, "reference"):
            program, dyn_batch, dyn_size, note = _capture(wrapper, inputs, dynamic)
            for optimize in (True, False):
                onnx_program = torch.onnx.export(program, inputs, dynamo=True, input_names=list(wrapper.input_names),
                                                 output_names=list(wrapper.output_names), opset_version=opset,
                                                 optimize=optimize, verbose=False)
                onnx_program.save(str(path), external_data=external)
                problem = _invalid(path)
                if problem is None:
                    break
                # The graph optimiser (constant folding, onnxscript) has been seen to drop a node another one
                # still reads (two-stage Deformable DETR): keep the translated graph as it is then.
                note = "; ".join(filter(None, [note, f"saved without graph optimisation ({problem})"]))
            else:
                raise RuntimeError(f"{path}: the exported ONNX model is invalid: {problem}")
    finally:
        for m, training in modes:
            m.training = training
    return OnnxExport(path, tuple(wrapper.input_names), tuple(wrapper.output_names), tuple(inputs[0].shape),
                      wrapper.size_multiple, dyn_batch, dyn_size, opset, note)


def check_onnx(path: str | Path, model: nn.Module, inputs: tuple[torch.Tensor, ...], with_mask: bool = False
               ) -> float:
    """Run the ONNX file with onnxruntime (CPU) and the model with PyTorch on `inputs`; the largest |difference|
    over all outputs. ValueError when the outputs' shapes differ."""
    require_onnx()
    import onnxruntime

    wrapper = wrap_for_export(model, with_mask)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {name: x.numpy() for name, x in zip(names, inputs)})
    modes = [(m, m.training) for m in wrapper.modules()]
    wrapper.eval()
    try:
        with torch.no_grad():
            want = wrapper(*inputs)
    finally:
        for m, training in modes:
            m.training = training
    worst = 0.0
    for name, a, b in zip(wrapper.output_names, got, want):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"{path}: output {name} has shape {tuple(a.shape)} in onnxruntime, "
                             f"{tuple(b.shape)} in PyTorch")
        worst = max(worst, float((torch.from_numpy(a) - b.float()).abs().max()))
    return worst


def _invalid(path: Path) -> str | None:
    """What the ONNX checker finds wrong with the file (first line), or None when it passes."""
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as err:
        return str(err).strip().splitlines()[0]
    return None


# ------------------------------------------------------------------------------------------------ capture
def _capture(wrapper: ExportWrapper, inputs: tuple[torch.Tensor, ...], dynamic: bool):
    """torch.export the wrapper: the most dynamic program that holds at a second size, and what it allows.

    Returns (ExportedProgram, dynamic batch, dynamic size, note or None).
    """
    from torch.export import export

    if not dynamic:
        return export(wrapper, inputs, strict=False), False, False, None
    traced = _trace_inputs(wrapper, inputs)
    note = None
    for free_size in (True, False):
        shapes = _dynamic_shapes(wrapper, traced, free_size)
        try:
            program = export(wrapper, traced, dynamic_shapes=shapes, strict=False)
            _probe(program, wrapper, traced, free_size)
        except (torch._dynamo.exc.UserError, AssertionError, RuntimeError) as err:
            reason = " ".join(str(err).split("\n\n")[0].split())
            note = note or f"image size fixed at {_size_text(inputs[0])}: {reason}"
            continue
        return program, True, free_size, note
    return export(wrapper, inputs, strict=False), False, False, note


def _trace_inputs(wrapper: ExportWrapper, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Inputs to trace a dynamic graph on: the examples, unless a side of 1 would occur, which torch.export fixes
    (0 and 1 are special sizes to it): then a batch of 2 and images large enough that every feature map is at
    least 2 x 2 (random values; only the shapes matter to the trace)."""
    B = inputs[0].shape[0]
    H, W = inputs[0].shape[-2:]
    side = 2 * wrapper.coarsest_stride
    side = -(-side // wrapper.size_multiple) * wrapper.size_multiple
    if B > 1 and H >= side and W >= side:
        return inputs
    size = (max(H, side), max(W, side))
    return tuple(x.new_zeros(max(B, 2), *size) if name == "mask" else torch.randn(max(B, 2), x.shape[1], *size, dtype=x.dtype)
                 for name, x in zip(wrapper.input_names, inputs))


def _dynamic_shapes(wrapper: ExportWrapper, inputs: tuple[torch.Tensor, ...], free_size: bool) -> dict:
    """torch.export dynamic_shapes: one batch dim for every input, and (free_size) one height and one width dim
    shared by every image and mask, as multiples of the wrapper's size_multiple."""
    from torch.export import Dim

    batch = Dim("batch", min=1)
    m = wrapper.size_multiple
    height = m * Dim("height_blocks", min=1) if free_size else None
    width = m * Dim("width_blocks", min=1) if free_size else None
    shapes = {}
    for name, x in zip(wrapper.input_names, inputs):
        dims = {0: batch}
        if free_size:
            first = x.ndim - 2  # (B, 3, H, W) images, (B, H, W) masks
            dims.update({first: height, first + 1: width})
        shapes[name] = dims
    return shapes


def _probe(program, wrapper: ExportWrapper, inputs: tuple[torch.Tensor, ...], free_size: bool) -> None:
    """Run the captured program at another batch (and size): a size the trace fixed fails a guard here."""
    grow = wrapper.size_multiple if free_size else 0
    probe = []
    for name, x in zip(wrapper.input_names, inputs):
        shape = list(x.shape)
        shape[0] += 1
        shape[-2] += grow
        shape[-1] += 2 * grow
        probe.append(torch.zeros(shape, dtype=torch.bool) if name == "mask" else torch.randn(shape, dtype=x.dtype))
    program.module()(*probe)


def _size_text(images: torch.Tensor) -> str:
    return f"{images.shape[-2]}x{images.shape[-1]}"
