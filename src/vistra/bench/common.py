"""What every benchmark shares: the device to time on, waiting for it, and a description of the machine."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path

import torch

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
