"""Backbones: ViT, PVT v1 / v2 (and ResNet in the detection work). Importing this registers their presets."""
from vistra.backbones import pvt, resnet, vit  # noqa: F401  (registers presets)
from vistra.backbones.features import FeatureExtractor

__all__ = ["FeatureExtractor"]
