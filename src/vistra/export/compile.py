"""torch.compile for vistra models: one entry point with the checks a CPU build needs.

    model = compile_model(model)                        # inductor: generated C++ (CPU) / Triton (GPU) kernels
    model = compile_model(model, backend="aot_eager")   # graph capture and AOT autograd only, no code generation

Deformable attention (Deformable DETR, TransCenter) with impl="auto" runs its grid_sample reference path while
torch.compile traces it, so the whole model is one graph; impl="fast" / "native" set explicitly still work,
with graph breaks around the op.
"""
from __future__ import annotations

import os
import shutil

import torch
from torch import nn

from vistra.engine.config import COMPILE_BACKENDS as BACKENDS

_CXX = ("c++", "g++", "clang++")


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would use on the CPU ($CXX, else c++ / g++ / clang++), or None."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else list(_CXX)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def compile_model(model: nn.Module, backend: str = "inductor", dynamic: bool | None = None,
                  fullgraph: bool = False, mode: str | None = None) -> nn.Module:
    """torch.compile(model) after checking the backend can run here.

    Args:
        backend: "inductor" (generates kernels; on the CPU it needs a C++ compiler), "aot_eager" (captures the
            forward and backward graphs and runs them eagerly: checks that a model compiles, fast to build),
            "eager" (graph capture only).
        dynamic: torch.compile's: None recompiles once with symbolic sizes when an input size changes, True starts
            symbolic, False specialises on every size.
        fullgraph: fail instead of splitting the graph where something cannot be traced.
        mode: inductor's mode ("default", "reduce-overhead", "max-autotune", ...).
    Returns:
        The compiled module: it shares parameters and buffers with `model` (its state_dict keys gain the prefix
        "_orig_mod."; vistra's checkpoint readers drop it). Compilation happens on the first call.
    """
    if backend not in BACKENDS:
        raise ValueError(f"torch.compile backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "inductor" and _runs_on_cpu(model) and cxx_compiler() is None:
        raise RuntimeError("torch.compile's inductor backend needs a C++ compiler for CPU models, and none was "
                           f"found (set CXX, or install one of {', '.join(_CXX)}); backend='aot_eager' compiles "
                           "without one")
    return torch.compile(model, backend=backend, dynamic=dynamic, fullgraph=fullgraph, mode=mode)


def _runs_on_cpu(model: nn.Module) -> bool:
    param = next(model.parameters(), None)
    return param is None or param.device.type == "cpu"
