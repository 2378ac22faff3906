"""Deployment: ONNX export (checked with onnxruntime) and torch.compile of vistra models.

onnx.py: export_onnx / check_onnx; wrappers.py: plain-tensor views of every model family; compile.py: compile_model.
onnx, onnxruntime and onnxscript (the `export` extra) are imported only when an export runs.
"""
from vistra.export.compile import compile_model
from vistra.export.onnx import DEFAULT_OPSET, OnnxExport, check_onnx, export_onnx, missing_packages
from vistra.export.wrappers import ExportWrapper, example_inputs, wrap_for_export

__all__ = [
    "DEFAULT_OPSET",
    "ExportWrapper",
    "OnnxExport",
    "check_onnx",
    "compile_model",
    "example_inputs",
    "export_onnx",
    "missing_packages",
    "wrap_for_export",
]
