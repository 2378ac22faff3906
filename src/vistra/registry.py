"""Model registry: names -> builder functions. Presets are plain functions that call a builder with a config."""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from pathlib import Path

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(ValueError):
    """Raised for a model name that is not registered; the message suggests close names."""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a preset under its function name."""
    if fn.__name__ in _BUILDERS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _BUILDERS[fn.__name__] = fn
    return fn


def _load_presets() -> None:
    import vistra.backbones  # noqa: F401  (registers the backbone presets)
    import vistra.detection.detr  # noqa: F401
    import vistra.segmentation.model  # noqa: F401  (seg_* / semfpn_* presets)
    import vistra.detection.deformable_detr  # noqa: F401
    import vistra.tracking.transcenter  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _load_presets()
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The builder registered under name; UnknownModelError names close matches otherwise."""
    _load_presets()
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, list(_BUILDERS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `vistra.list_models()`"
        raise UnknownModelError(f"unknown model {name!r}{hint}")
    return _BUILDERS[name]


def create_model(
    name: str,
    pretrained: str | Path | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model, optionally load weights from any supported checkpoint format.

    features_only=True returns a FeatureExtractor whose forward gives the list of pyramid maps selected by
    out_indices (default: all levels). With pretrained weights and features_only, the classifier head of the
    checkpoint is ignored.
    """
    builder = get_builder(name)
    if features_only:
        overrides.setdefault("num_classes", 0)
    model = builder(**overrides)
    if pretrained is not None:
        from vistra.checkpoints import load_pretrained

        load_pretrained(model, pretrained, skip_mismatched_head=features_only or "num_classes" in overrides)
    if features_only:
        from vistra.backbones.features import FeatureExtractor

        return FeatureExtractor(model, out_indices)
    return model
