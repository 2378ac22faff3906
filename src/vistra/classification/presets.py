"""Small classification presets for the built-in datasets (the demo's digits ViT) and the recipe they train with."""
from __future__ import annotations

from vistra.backbones.vit import ViTConfig, VisionTransformer
from vistra.registry import register_model

DIGITS_DATA_SIZE = 32  # px, the digits-cls images `vistra demo` writes (the model reads them at its img_size)


@register_model
def vit_digits(**kw) -> VisionTransformer:
    """ViT for the 8x8-pixel scikit-learn digits read at 16x16: patch 4 (4x4 tokens, each 2x2 scanned pixels),
    D 96, 4 layers, 3 heads, 10 classes; 0.45M parameters, small enough to train on a CPU in minutes."""
    kw.setdefault("num_classes", 10)
    kw.setdefault("img_size", 16)
    kw.setdefault("patch_size", 4)
    return VisionTransformer(ViTConfig(embed_dim=kw.pop("embed_dim", 96), depth=kw.pop("depth", 4),
                                       num_heads=kw.pop("num_heads", 3), **kw))


# The recipe `vistra demo` trains vit_digits with on the digits-cls data (configs/classify_digits.yaml holds
# the same values). Light augmentation: digits must not be flipped, and crops that cut strokes away slow
# learning on this small set; small batches give the many optimizer steps a ViT from scratch needs.
# Measured on 1 CPU thread: val top-1 98.33% (6 of 359 wrong; best epoch 18 of 20), 6-13 s per epoch on a busy
# 2-core machine. 16 epochs reach only 96.9%, batch 32 only 95.3%, scale (0.6, 1) crops learn much slower.
DIGITS_RECIPE = {
    "model": {"name": "vit_digits", "drop_path_rate": 0.0},
    "data": {"crop_pct": 1.0, "eval_batch_size": 128},
    "aug": {"scale": [0.8, 1.0], "hflip": 0.0, "random_erasing": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0,
            "label_smoothing": 0.1},
    "train": {"epochs": 20, "batch_size": 16, "lr": 0.001, "weight_decay": 0.05, "warmup_epochs": 1,
              "min_lr": 1.0e-05, "out_dir": "runs/classify_digits"},
}
