"""Image classification: the train/eval recipe, top-k evaluation, prediction with attention rollout.

Names are imported on first use, so importing this package (e.g. for the demo presets) stays cheap.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "ClassifyConfig": "vistra.classification.config",
    "train_classify": "vistra.classification.recipe",
    "eval_classify": "vistra.classification.recipe",
    "evaluate": "vistra.classification.evaluate",
    "topk_correct": "vistra.classification.evaluate",
    "predict": "vistra.classification.predict",
    "attention_rollout": "vistra.classification.rollout",
    "ClassifierInfo": "vistra.classification.model_file",
    "load_classifier": "vistra.classification.model_file",
    "save_classifier": "vistra.classification.model_file",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vistra.classification' has no attribute {name!r}")
