"""What every benchmark shares: the device to time on, waiting for it, and a description of the machine."""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

DEVICES = ("cpu", "cuda")
RESULTS_DIR = Path("runs") / "bench"  # where results go by default, relative to the working folder


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where to run (default cpu)")


def resolve_device(name: str) -> torch.device:
    """torch.device(name), or ValueError when CUDA is asked for and not available."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available to this PyTorch (torch.cuda.is_available() is False)")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work to finish (a no-op on the CPU), so that timings include it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def device_info(device: torch.device) -> dict:
    """{"device": "cpu" / "cuda", "gpu": name or None, "cuda": CUDA version or None}."""
    if device.type != "cuda":
        return {"device": "cpu", "gpu": None, "cuda": None}
    return {"device": "cuda", "gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def optional_version(package: str) -> str | None:
    """The version of an installed package (e.g. "timm"), or None when it cannot be imported."""
    try:
        module = __import__(package)
    except ImportError:
        return None
    return getattr(module, "__version__", "unknown")


def timed(fn: Callable[[], object], device: torch.device = torch.device("cpu"), iters: int = 1) -> float:
    """Seconds per call of fn over `iters` calls, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def machine_info(threads: int, device: torch.device = torch.device("cpu"), packages: Sequence[str] = (),
                 cpu_capability: bool = False) -> dict:
    """What the results were measured on: date, CPU, threads, device, torch and Python versions, the versions of
    `packages` (the reference libraries compared with; None when missing), the load average at the start."""
    info = {"date": now(), "cpu": cpu_name(), "cpu_count": os.cpu_count()}
    if cpu_capability:
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info.update({"threads": threads, **device_info(device), "torch": torch.__version__,
                 **{p: optional_version(p) for p in packages}, "python": platform.python_version(),
                 "loadavg_start": loadavg()})
    return info


def log(message: str, settings: dict) -> None:
    """A progress line on stderr when the run's settings ask for verbose output."""
    if settings["verbose"]:
        print(message, file=sys.stderr, flush=True)


def _attention_flops(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args, out_val=None,
                     **kwargs) -> int:
    """q (..., Lq, d) @ k^T (..., d, Lk) and weights (..., Lq, Lk) @ v (..., Lk, dv), as 2 x multiply-accumulates."""
    *lead, lq, d = query.shape
    lk, dv = key.shape[-2], value.shape[-1]
    batch = math.prod(torch.broadcast_shapes(tuple(lead), tuple(key.shape[:-2])))
    return 2 * batch * lq * lk * (d + dv)


_attention_flops._get_raw = True  # FlopCounterMode passes the tensors themselves


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 x multiply-accumulates) of one call; CPU's fused attention counted like the GPU kernels (under
    inference_mode the counter sees scaled_dot_product_attention itself, not the kernel it picks)."""
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_flops,
               torch.ops.aten.scaled_dot_product_attention: _attention_flops}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()
