"""Format detection, key conversion and loading with a report: any supported checkpoint -> a vistra model.

    state = read_checkpoint(path)            # io.py: flat {name: tensor}
    fmt = detect_format(state)               # from key patterns
    state = convert_state_dict(state, model) # vistra names; position embeddings resized to the model's grid
    report = load_pretrained(model, path)    # all of it, plus shape checks; CheckpointError lists what is wrong

Formats (detect_format): "vit" (timm / vistra names), "hf_vit", "pvt" and "pvt_v2" (official whai362 / vistra
names), "timm_pvt_v2", "hf_pvt", "hf_pvt_v2", "detr_official", "detr_hf" (convert_detr.py),
"deformable_detr_official", "deformable_detr_hf" (convert_deformable_detr.py), "transcenter_official"
(convert_transcenter.py: official TransCenter V2 / Lite, converted in part, see PARTIAL_FORMATS), "unknown" (loaded
by name as it is: vistra's own files of any other model).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vistra.checkpoints.convert_deformable_detr import (
    convert_deformable_detr_state_dict,
    detect_deformable_detr_format,
)
from vistra.checkpoints.convert_detr import convert_detr_state_dict, detect_detr_format
from vistra.checkpoints.convert_pvt import (
    HF_PVT_RULES,
    HF_PVT_V2_RULES,
    TIMM_PVT_V2_RULES,
    is_hf_pvt,
    is_hf_pvt_v2,
    is_official_pvt,
    is_official_pvt_v2,
    is_timm_pvt_v2,
)
from vistra.checkpoints.convert_transcenter import convert_transcenter_official, detect_transcenter_format
from vistra.checkpoints.convert_vit import HF_VIT_RULES, VIT_HEAD_PREFIXES, is_hf_vit, is_timm_vit
from vistra.checkpoints.errors import CheckpointError
from vistra.checkpoints.io import read_checkpoint, unwrap_state_dict
from vistra.layers.position import resample_abs_pos_embed

# format -> (model family it holds, key rules or None for names that are already vistra's)
FORMATS = {
    "hf_vit": ("vit", HF_VIT_RULES),
    "vit": ("vit", None),
    "timm_pvt_v2": ("pvt_v2", TIMM_PVT_V2_RULES),
    "hf_pvt_v2": ("pvt_v2", HF_PVT_V2_RULES),
    "pvt_v2": ("pvt_v2", None),
    "hf_pvt": ("pvt", HF_PVT_RULES),
    "pvt": ("pvt", None),
    "detr_official": ("detr", None),
    "detr_hf": ("detr", None),
    "deformable_detr_official": ("deformable_detr", None),
    "deformable_detr_hf": ("deformable_detr", None),
    "transcenter_official": ("transcenter", None),
}
# Formats whose architecture vistra shares only in part: what converts loads, the model keeps the rest as
# initialised (load with strict=False; the report lists both sides).
PARTIAL_FORMATS = {"transcenter_official"}
_DETECTORS = [
    ("hf_vit", is_hf_vit), ("hf_pvt_v2", is_hf_pvt_v2), ("hf_pvt", is_hf_pvt), ("timm_pvt_v2", is_timm_pvt_v2),
    ("pvt_v2", is_official_pvt_v2), ("pvt", is_official_pvt), ("vit", is_timm_vit),
]
# Classifier parameters per model family (skip_mismatched_head drops them); "head." for any other family.
HEAD_PREFIXES = {"vit": VIT_HEAD_PREFIXES, "detr": ("class_embed.",), "deformable_detr": ("class_embed.",),
                 "resnet": ("fc.",)}
_POS_EMBED = re.compile(r"(?:(.*)\.)?(pos_embed)(\d?)")
_IGNORED_SUFFIXES = ("num_batches_tracked",)  # BatchNorm step counters: never worth an error
_SHOW = 10


@dataclass
class LoadReport:
    """What load_pretrained did. mismatched: (key, file shape, model shape); resized: (key, old, new) shapes."""

    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    skipped_head: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    loaded: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = [f"{self.loaded} tensors loaded (format {self.format})"]
        for name, items in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("mismatched", self.mismatched), ("head skipped", self.skipped_head),
                            ("dropped", self.dropped), ("resized", self.resized)):
            if items:
                parts.append(f"{len(items)} {name}")
        return ", ".join(parts)


def detect_format(state_dict: dict[str, torch.Tensor]) -> str:
    """The checkpoint format from its key names (see the module docstring); "unknown" when nothing matches."""
    whole_model = (detect_transcenter_format(state_dict) or detect_detr_format(state_dict)
                   or detect_deformable_detr_format(state_dict))
    if whole_model is not None:
        return whole_model
    keys = list(state_dict)
    return next((name for name, test in _DETECTORS if test(keys)), "unknown")


def apply_key_map(state_dict: dict[str, torch.Tensor], rules, dropped: list[str] | None = None,
                  fmt: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Rename keys by rules (pattern, target, part); see convert_vit.py. Unmatched keys pass through unchanged,
    keys whose target is None are listed in dropped, parts are concatenated along dim 0 in index order."""
    compiled = [(re.compile(p), t, part) for p, t, part in rules]
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, tuple[torch.Tensor, int, str]]] = {}
    for key, value in state_dict.items():
        for pattern, target, part in compiled:
            m = pattern.fullmatch(key)
            if m:
                break
        else:
            out[key] = value
            continue
        if target is None:
            if dropped is not None:
                dropped.append(key)
            continue
        new = target(m) if callable(target) else m.expand(target)
        if part is None:
            out[new] = value
        else:
            parts.setdefault(new, {})[part[0]] = (value, part[1], key)
    for new, got in parts.items():
        count = next(iter(got.values()))[1]
        absent = [i for i in range(count) if i not in got]
        if absent:
            have = ", ".join(src for _, _, src in got.values())
            raise CheckpointError(f"{fmt} checkpoint: cannot build {new} from {count} parts: only {have} present")
        out[new] = torch.cat([got[i][0] for i in range(count)], dim=0)
    return out


def convert_state_dict(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None, fmt: str | None = None,
                       dropped: list[str] | None = None,
                       resized: list[tuple[str, tuple[int, ...], tuple[int, ...]]] | None = None
                       ) -> dict[str, torch.Tensor]:
    """Keys of any supported format -> vistra's names; with a model, position embeddings are also resized to its
    grid (ViT: bicubic with antialiasing, as timm; PVT v1: bilinear, as the official code). Never modifies its
    input. dropped / resized, when given, collect the keys discarded on purpose and the resized tensors."""
    fmt = fmt or detect_format(state_dict)
    if fmt in ("detr_official", "detr_hf"):
        try:
            out = convert_detr_state_dict(state_dict, fmt)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    elif fmt in ("deformable_detr_official", "deformable_detr_hf"):
        try:
            out = convert_deformable_detr_state_dict(state_dict, fmt, dropped)
        except ValueError as e:
            raise CheckpointError(str(e)) from None
    elif fmt == "transcenter_official":
        out = convert_transcenter_official(state_dict, dropped)
    elif FORMATS.get(fmt, (None, None))[1] is not None:
        out = apply_key_map(state_dict, FORMATS[fmt][1], dropped, fmt)
    else:
        out = dict(state_dict)
    if model is not None:
        out = _resize_position_embeddings(out, model, resized)
    return out


def load_state_dict(path: str | Path, model: nn.Module | None = None,
                    key: str | None = None) -> dict[str, torch.Tensor]:
    """Read a checkpoint in any supported format -> {name: tensor} in vistra's names (fitted to model if given)."""
    return convert_state_dict(read_checkpoint(path, key)[0], model)


def load_pretrained(model: nn.Module, path_or_state, strict: bool = True,
                    skip_mismatched_head: bool = False, source: str | None = None) -> LoadReport:
    """Load a checkpoint (path, Hugging Face folder or state dict, any supported format) into model.

    Every tensor must fit: with strict=True any missing / unexpected key or shape mismatch raises CheckpointError
    listing them (first ten of each, with counts); strict=False loads what fits and reports the rest.
    skip_mismatched_head=True (fine-tuning with another num_classes, or a headless model) leaves the classifier
    of the model as initialised when the file's differs or is absent, and lists it in report.skipped_head.
    source: how errors name a state dict given directly (default "<state dict>").
    """
    if isinstance(path_or_state, (str, Path)):
        source = str(path_or_state)
        state, meta = read_checkpoint(path_or_state)
    else:
        source, meta = source or "<state dict>", {}
        state = unwrap_state_dict(path_or_state, source)
    fmt = detect_format(state)
    report = LoadReport(format=fmt)
    state = convert_state_dict(state, model, fmt, report.dropped, report.resized)
    _compare(state, model.state_dict(), report)
    if skip_mismatched_head:
        _skip_head(state, model, report)
    if strict and not report.ok:
        raise CheckpointError(_describe(report, model, source, meta))
    target = model.state_dict()
    fits = [k for k, v in state.items() if k in target and v.shape == target[k].shape]
    with torch.no_grad():
        model.load_state_dict({k: state[k] for k in fits}, strict=False)
    report.loaded = len(fits)
    return report


def _compare(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor], report: LoadReport) -> None:
    ignored = lambda k: k.endswith(_IGNORED_SUFFIXES)  # noqa: E731
    report.missing = [k for k in target if k not in state and not ignored(k)]
    report.unexpected = [k for k in state if k not in target and not ignored(k)]
    report.mismatched = [(k, tuple(v.shape), tuple(target[k].shape)) for k, v in state.items()
                         if k in target and v.shape != target[k].shape]


def _skip_head(state: dict[str, torch.Tensor], model: nn.Module, report: LoadReport) -> None:
    prefixes = HEAD_PREFIXES.get(getattr(model, "arch", None), ("head.",))
    is_head = lambda k: k.startswith(prefixes)  # noqa: E731
    heads = [k for k, _, _ in report.mismatched if is_head(k)]
    heads += [k for k in report.unexpected + report.missing if is_head(k)]
    if not heads:
        return
    report.skipped_head = sorted(set(heads))
    report.missing = [k for k in report.missing if not is_head(k)]
    report.unexpected = [k for k in report.unexpected if not is_head(k)]
    report.mismatched = [m for m in report.mismatched if not is_head(m[0])]
    for k in heads:
        state.pop(k, None)


def _resize_position_embeddings(state: dict[str, torch.Tensor], model: nn.Module, resized) -> dict[str, torch.Tensor]:
    """ViT pos_embed / PVT v1 pos_embed{s} of another grid -> the model's grid (square grids in the file)."""
    target = model.state_dict()
    out = dict(state)
    for key, value in state.items():
        m = _POS_EMBED.fullmatch(key)
        if not m or key not in target or value.shape == target[key].shape or value.ndim != 3:
            continue
        owner = model.get_submodule(m[1]) if m[1] else model
        arch = getattr(owner, "arch", None)
        if arch == "vit" and not m[3]:
            new_hw, mode, antialias = tuple(owner.grid_size), "bicubic", True
        elif arch == "pvt" and m[3]:
            new_hw, mode, antialias = tuple(owner.grid_sizes[int(m[3]) - 1]), "bilinear", False
        else:
            continue
        prefix = target[key].shape[1] - new_hw[0] * new_hw[1]
        side = math.isqrt(max(value.shape[1] - prefix, 0))
        if prefix < 0 or side * side != value.shape[1] - prefix or value.shape[2] != target[key].shape[2]:
            continue  # not a square grid with the same prefix: reported as a shape mismatch
        out[key] = resample_abs_pos_embed(value, new_hw, (side, side), num_prefix_tokens=prefix, mode=mode,
                                          antialias=antialias)
        if resized is not None:
            resized.append((key, tuple(value.shape), tuple(out[key].shape)))
    return out


def _describe(report: LoadReport, model: nn.Module, source: str, meta: dict[str, str]) -> str:
    arch = getattr(model, "arch", None)
    origin = f"format {report.format}"
    if meta.get("format") == "vistra" and meta.get("model"):
        origin += f", saved from vistra model {meta['model']!r}"
    if meta.get("hf_architectures"):
        origin += f", Hugging Face {meta['hf_architectures']}"
    lines = [f"{source}: checkpoint ({origin}) does not fit {type(model).__name__} (family {arch}):"]
    if report.missing:
        lines.append(f"  {_n(report.missing, 'missing key')} (in the model, not in the file): {_some(report.missing)}")
    if report.unexpected:
        lines.append(f"  {_n(report.unexpected, 'unexpected key')} (in the file, not in the model): "
                     f"{_some(report.unexpected)}")
    if report.mismatched:
        shown = [f"{k}: {tuple(a)} in the file vs {tuple(b)} in the model" for k, a, b in report.mismatched]
        lines.append(f"  {_n(shown, 'shape mismatch', 'es')}: {_some(shown, sep='; ')}")
    lines += [f"  hint: {h}" for h in _hints(report, arch, meta)]
    return "\n".join(lines)


def _hints(report: LoadReport, arch: str | None, meta: dict[str, str]) -> list[str]:
    hints = []
    holds = FORMATS.get(report.format, (None, None))[0]
    if holds and arch and holds != arch:
        hints.append(f"the file holds a {holds} checkpoint but the model is a {arch}: choose a {holds} model")
    prefixes = HEAD_PREFIXES.get(arch, ("head.",))
    bad = [k for k, _, _ in report.mismatched] + report.missing + report.unexpected
    if bad and all(k.startswith(prefixes) for k in bad):
        classes = next((a[0] for k, a, _ in report.mismatched if k.endswith("head.weight")), meta.get("num_classes"))
        fix = f"num_classes={classes}" if classes is not None else "num_classes=..."
        hints.append(f"only the classifier differs: build the model with {fix}, or fine-tune a new head with "
                     f"create_model(name, num_classes=K, pretrained=...) or "
                     f"load_pretrained(..., skip_mismatched_head=True)")
    if report.format in PARTIAL_FORMATS and not report.unexpected:
        hints.append("vistra shares only part of this architecture (README, Tracking): load what converts with "
                     "load_pretrained(model, path, strict=False) or `vistra convert`; the rest keeps its "
                     "initialisation")
    if any(k.startswith("fc_norm.") for k in report.unexpected):
        hints.append("fc_norm: the file was trained with global average pooling (timm global_pool='avg'); "
                     "vistra's ViT classifies from the class token")
    if any(k.endswith(("pos_embed", "pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4"))
           for k, _, _ in report.mismatched):
        hints.append("position embeddings that are not a square grid with the model's number of prefix tokens "
                     "cannot be resized")
    return hints


def _n(items: list, noun: str, plural: str = "s") -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else plural}"


def _some(items: list[str], sep: str = ", ") -> str:
    shown = sep.join(items[:_SHOW])
    return shown + (f"{sep}... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")
