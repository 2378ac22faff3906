"""Semantic segmentation: heads (linear, progressive upsampling, semantic FPN), the Segmenter model and its
presets, mIoU, whole-image / sliding-window inference. Importing this registers the `seg_*` / `semfpn_*` presets
(`vistra.create_model` does it on its own).

Runs live in modules imported on demand (they need the data and engine packages): `config` (settings),
`recipe` (training), `evaluate` (mIoU of a trained model), `predict` (mask PNGs and overlays), `commands` (the
CLI verbs) and `demo_section` (the `vistra demo` section).
"""
from vistra.segmentation.heads import LinearHead, ProgressiveUpsamplingHead, SemanticFPNHead
from vistra.segmentation.inference import slide_inference, whole_inference
from vistra.segmentation.metrics import ConfusionMatrix
from vistra.segmentation.model import Segmenter, SegmenterConfig, build_segmenter

__all__ = [
    "ConfusionMatrix",
    "LinearHead",
    "ProgressiveUpsamplingHead",
    "Segmenter",
    "SegmenterConfig",
    "SemanticFPNHead",
    "build_segmenter",
    "slide_inference",
    "whole_inference",
]
