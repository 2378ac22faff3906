"""Checkpoints: read any supported format, convert official / timm / Hugging Face names, load with checks, save.

    from vistra.checkpoints import load_pretrained, save_checkpoint
    report = load_pretrained(model, "pvt_v2_b0.pth")   # CheckpointError lists missing / unexpected / mismatched
    save_checkpoint(model, "out.safetensors", model_name="pvt_v2_b0")
"""
from vistra.checkpoints.convert import (
    LoadReport,
    apply_key_map,
    convert_state_dict,
    detect_format,
    load_pretrained,
    load_state_dict,
)
from vistra.checkpoints.errors import CheckpointError
from vistra.checkpoints.io import read_checkpoint, read_state_dict, save_checkpoint, unwrap_state_dict

__all__ = [
    "CheckpointError",
    "LoadReport",
    "apply_key_map",
    "convert_state_dict",
    "detect_format",
    "load_pretrained",
    "load_state_dict",
    "read_checkpoint",
    "read_state_dict",
    "save_checkpoint",
    "unwrap_state_dict",
]
