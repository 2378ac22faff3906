"""Reading any checkpoint file into a flat {name: tensor} dict, and writing vistra's own (safetensors).

Readable: safetensors; PyTorch pickles (.pth / .pt / .bin, zip or legacy) through `torch.load(weights_only=True)`
only, with argparse.Namespace allowed so that official DETR / Deformable-DETR files (which pickle their `args`)
load without running any code; a Hugging Face model folder (model.safetensors, pytorch_model.bin, or a sharded
*.index.json). Training checkpoints are unwrapped ("model", "state_dict", "model_ema", ...) and DataParallel /
torch.compile prefixes ("module.", "_orig_mod.") removed. Every failure is a CheckpointError naming the path.

vistra's files are safetensors with metadata {"format": "vistra", "model": name, "arch": family}.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import pickle
import re
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from vistra.atomic_io import atomic_path
from vistra.checkpoints.errors import CheckpointError

# Sub-dicts that hold the weights in training checkpoints, in order of preference.
WRAPPER_KEYS = ("model", "state_dict", "model_state", "model_state_dict", "module", "model_ema", "state_dict_ema")
STRIP_PREFIXES = ("module.", "_orig_mod.")
HF_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
HF_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# Plain-data classes that training scripts pickle next to the weights (their argparse args); building them runs
# no code from the file.
_SAFE_PICKLE_GLOBALS = [argparse.Namespace, pathlib.PosixPath, pathlib.PurePosixPath]


def read_checkpoint(path: str | Path, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint file or Hugging Face folder -> (flat state dict, metadata).

    key picks the sub-dict of a training checkpoint (e.g. "model_ema"); by default the first of WRAPPER_KEYS
    present is used. Metadata is the safetensors header metadata ({} for pickles); for a Hugging Face folder it
    also holds "hf_architectures" from config.json.
    """
    path = Path(path)
    if path.is_dir():
        return _read_hf_folder(path, key)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    kind = _sniff(path)
    if kind == "safetensors":
        state, meta = _read_safetensors(path)
        return unwrap_state_dict(state, path, key), meta
    return unwrap_state_dict(_torch_load(path), path, key), {}


def read_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """read_checkpoint without the metadata."""
    return read_checkpoint(path, key)[0]


def unwrap_state_dict(obj: object, source: str | Path = "<state dict>",
                      key: str | None = None) -> dict[str, torch.Tensor]:
    """A loaded object -> flat {name: tensor}: picks the weights sub-dict, drops non-tensors, strips prefixes."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a dict of tensors")
    if key is not None:
        if not isinstance(obj.get(key), dict):
            raise CheckpointError(f"{source}: has no sub-dict {key!r}; top-level keys: {_some(list(obj))}")
        obj = obj[key]
    else:
        for _ in range(3):  # e.g. {"state_dict": {"model": {...}}}
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
            if inner is None or any(isinstance(v, torch.Tensor) for v in obj.values()):
                break
            obj = inner
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{source}: contains no tensors; top-level keys: {_some(list(obj))}")
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    return state


def save_checkpoint(
    model_or_state: nn.Module | dict[str, torch.Tensor],
    path: str | Path,
    model_name: str | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a model's (or a dict's) tensors as vistra safetensors, atomically (vistra.atomic_io).

    Tensors sharing memory (tied weights) are cloned, since safetensors stores each tensor on its own.
    Metadata: {"format": "vistra", "model": model_name, "arch": model.arch} plus the given string pairs.
    """
    path = Path(path)
    if isinstance(model_or_state, nn.Module):
        state = model_or_state.state_dict()
        arch = getattr(model_or_state, "arch", None)
    else:
        state, arch = dict(model_or_state), None
    tensors = _own_storage(state)
    meta = {"format": "vistra", **({"arch": arch} if arch else {}), **({"model": model_name} if model_name else {})}
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as temp:
        save_file(tensors, str(temp), metadata=meta)
    return path


def _own_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU contiguous tensors, each with storage of its own (clones where memory is shared or partial)."""
    out, seen = {}, set()
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"cannot save {k!r}: a {type(v).__name__}, not a tensor")
        t = v.detach().cpu()
        storage = t.untyped_storage()
        whole = storage.nbytes() == t.numel() * t.element_size()
        if storage.data_ptr() in seen or not whole or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)
        seen.add(t.untyped_storage().data_ptr())
        out[k] = t
    return out


def _sniff(path: Path) -> str:
    """"safetensors", "torch_zip" or "torch_legacy" from the first bytes; CheckpointError otherwise."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if size == 0:
        raise CheckpointError(f"{path}: empty file")
    if head[:4] == b"PK\x03\x04":
        return _check_zip(path)
    header_len = int.from_bytes(head[:8], "little")
    if len(head) == 9 and head[8:9] == b"{" and header_len < 2**30:  # safetensors: u64 header size, then JSON
        if 8 + header_len > size:
            raise CheckpointError(f"{path}: truncated safetensors file (header says {header_len} bytes, "
                                  f"file has {size})")
        return "safetensors"
    if head[:1] == b"\x80":  # a pickle (protocol >= 2): PyTorch's legacy format
        return "torch_legacy"
    hint = " (numpy .npz archives, e.g. official JAX ViT weights, are not supported)" if path.suffix == ".npz" else ""
    raise CheckpointError(f"{path}: not a checkpoint: neither safetensors nor a PyTorch file{hint}")


def _check_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt file (broken zip archive: {e})") from None
    if any(n.endswith("data.pkl") for n in names):
        return "torch_zip"
    if any(n.endswith(".npy") for n in names):
        raise CheckpointError(f"{path}: a numpy .npz archive (e.g. official JAX ViT weights), which vistra does not "
                              f"read; convert it with timm first and save the state_dict")
    raise CheckpointError(f"{path}: a zip archive but not a PyTorch checkpoint (no data.pkl inside)")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from None
    return state, meta


def _torch_load(path: Path) -> object:
    """torch.load(weights_only=True) with argparse.Namespace (and paths) allowed; never runs code from the file."""
    try:
        with torch.serialization.safe_globals(_SAFE_PICKLE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        found = re.search(r"GLOBAL ([\w.]+)", msg)
        if found:
            what = f"the global {found[1]}"
            raise CheckpointError(
                f"{path}: refused to unpickle {what}. vistra reads pickled checkpoints with "
                f"torch.load(weights_only=True) only, which never runs code from the file; if you trust the file, "
                f"re-save its tensors as safetensors in an environment you control") from None
        detail = msg.split("WeightsUnpickler error:")[-1].strip().splitlines()[0] if msg else repr(e)
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch file ({detail})") from None
    except (RuntimeError, SafetensorError) as e:
        first = str(e).splitlines()[0] if str(e) else repr(e)
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch file ({first})") from None
    except Exception as e:  # a damaged pickle can make the unpickler fail in many ways (EOFError, IndexError, ...)
        raise CheckpointError(f"{path}: truncated or corrupt PyTorch file ({type(e).__name__}: {e})") from None


def _read_hf_folder(folder: Path, key: str | None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A Hugging Face save_pretrained folder (single file or sharded) -> (state dict, metadata)."""
    meta: dict[str, str] = {}
    config = folder / "config.json"
    if config.is_file():
        try:
            archs = json.loads(config.read_text()).get("architectures") or []
            meta["hf_architectures"] = ",".join(archs)
        except (json.JSONDecodeError, OSError, AttributeError):
            pass
    for name in HF_SINGLE_FILES:
        if (folder / name).is_file():
            state, file_meta = read_checkpoint(folder / name, key)
            return state, {**file_meta, **meta}
    for name in HF_INDEX_FILES:
        if (folder / name).is_file():
            return _read_sharded(folder / name), meta
    weights = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".pth", ".pt", ".bin"))
    if len(weights) == 1:
        state, file_meta = read_checkpoint(weights[0], key)
        return state, {**file_meta, **meta}
    present = _some(sorted(p.name for p in folder.iterdir()))
    looked = ", ".join(HF_SINGLE_FILES + HF_INDEX_FILES)
    raise CheckpointError(f"{folder}: a folder without a model file: looked for {looked} (or exactly one "
                          f".safetensors / .pth / .pt / .bin); found: {present or 'nothing'}")


def _read_sharded(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, OSError) as e:
        raise CheckpointError(f"{index}: not a valid sharded-checkpoint index ({type(e).__name__}: {e})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        if not (index.parent / shard).is_file():
            raise CheckpointError(f"{index}: shard {shard} is missing from {index.parent}")
        state.update(read_checkpoint(index.parent / shard)[0])
    return state


def _some(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")
