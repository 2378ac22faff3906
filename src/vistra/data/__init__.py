"""Datasets, image reading and transforms."""
from vistra.data.cls_transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MixupCutmix,
    build_eval_transform,
    build_train_transform,
    classification_loss,
    smooth_one_hot,
    soft_target_cross_entropy,
)
from vistra.data.digits import make_digits_cls
from vistra.data.errors import DataError
from vistra.data.image_folder import IMG_EXTENSIONS, ImageFolderDataset
from vistra.data.image_io import read_image, to_rgb

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "DataError",
    "ImageFolderDataset",
    "MixupCutmix",
    "build_eval_transform",
    "build_train_transform",
    "classification_loss",
    "make_digits_cls",
    "read_image",
    "smooth_one_hot",
    "soft_target_cross_entropy",
    "to_rgb",
]
