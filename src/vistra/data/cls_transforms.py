"""Classification augmentations (DeiT recipe): image transforms, batch Mixup/CutMix, soft-target loss."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_ASPECT = 16  # evaluation resizes never make the longer side more than this many times the resize size


class ResizeShorterSide(v2.Transform):
    """torchvision's ``Resize(size)`` (shorter side to `size`, aspect ratio kept), except that the longer side is
    capped at ``MAX_ASPECT * size`` (the shorter side then shrinks with it, to one pixel at least): an image 1
    pixel wide and 50000 tall stays a few MiB instead of growing to gigabytes. Images up to MAX_ASPECT:1 are
    resized exactly as by torchvision."""

    def __init__(self, size: int, interpolation: str = "bilinear"):
        super().__init__()
        self.size = int(size)
        self.interpolation = v2.InterpolationMode(interpolation)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next(x for x in flat_inputs if isinstance(x, (torch.Tensor, Image.Image)))
        height, width = TF.get_size(image)
        short, long = min(height, width), max(height, width)
        new_short, new_long = self.size, int(self.size * long / short)  # torchvision's arithmetic
        cap = MAX_ASPECT * self.size
        if new_long > cap:
            new_short, new_long = max(1, int(cap * new_short / new_long)), cap
        return {"size": [new_short, new_long] if height <= width else [new_long, new_short]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(TF.resize, inpt, size=params["size"], interpolation=self.interpolation,
                                 antialias=True)


def build_train_transform(
    img_size: int = 224,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    color_jitter: float | tuple[float, float, float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    random_erasing: float = 0.25,
    interpolation: str = "bicubic",
) -> v2.Compose:
    """Training transform: PIL image or (3,H,W) uint8 tensor -> (3, img_size, img_size) float32.

    RandomResizedCrop(scale, ratio) -> horizontal flip with probability ``hflip`` (use 0 for digits
    and text) -> optional ColorJitter (brightness, contrast, saturation) -> float in [0, 1] ->
    Normalize(mean, std) -> RandomErasing with probability ``random_erasing``, filling with
    per-pixel normal noise (timm's "pixel" mode). Randomness comes from torch's global RNG.
    """
    steps: list[v2.Transform] = [
        v2.ToImage(),
        v2.RandomResizedCrop(img_size, scale=scale, ratio=ratio, interpolation=interpolation, antialias=True),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if color_jitter:
        b, c, s = (color_jitter,) * 3 if isinstance(color_jitter, (int, float)) else color_jitter
        steps.append(v2.ColorJitter(brightness=b, contrast=c, saturation=s))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    if random_erasing > 0:
        steps.append(v2.RandomErasing(p=random_erasing, value="random"))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def build_eval_transform(
    img_size: int = 224,
    *,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
) -> v2.Compose:
    """Evaluation transform: PIL image or (3,H,W) uint8 tensor -> (3, img_size, img_size) float32.

    Resize the shorter side to ``floor(img_size / crop_pct)`` (see ResizeShorterSide for images longer than
    MAX_ASPECT:1), center-crop ``img_size`` (padding with zeros where the image is smaller), scale to [0, 1],
    Normalize(mean, std). ``crop_pct=1`` resizes straight to the crop size.
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return v2.Compose([
        v2.ToImage(),
        ResizeShorterSide(math.floor(img_size / crop_pct), interpolation=interpolation),
        v2.CenterCrop(img_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
        v2.ToPureTensor(),
    ])


class MixupCutmix:
    """Mixup / CutMix over a batch, with label smoothing, as in DeiT (timm's batch mode).

    With probability ``prob`` the batch is mixed with its reverse (sample i with sample B-1-i):
    CutMix with probability ``switch_prob`` (when both alphas > 0), else Mixup. The mixing weight
    ``lam`` is drawn from Beta(alpha, alpha); for CutMix it is corrected to the pasted box's area.
    All randomness uses torch's global RNG, so a resumed run that restores it repeats exactly.
    Setting both alphas to 0 (or ``prob=0``) leaves images alone and only smooths the labels.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
    ):
        if num_classes < 1 or mixup_alpha < 0 or cutmix_alpha < 0:
            raise ValueError("MixupCutmix needs num_classes >= 1 and alphas >= 0")
        if not (0 <= prob <= 1 and 0 <= switch_prob <= 1 and 0 <= label_smoothing < 1):
            raise ValueError("MixupCutmix needs prob, switch_prob in [0, 1] and label_smoothing in [0, 1)")
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.label_smoothing = label_smoothing

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B,C,H,W) float, labels (B,) int -> (mixed images (B,C,H,W), targets (B,num_classes)).

        Each target row sums to 1. The input tensors are not modified.
        """
        if images.dim() != 4 or labels.shape != images.shape[:1]:
            shapes = f"{tuple(images.shape)} and {tuple(labels.shape)}"
            raise ValueError(f"MixupCutmix expects images (B,C,H,W) and labels (B,), got {shapes}")
        lam = 1.0
        if self._mixes():
            use_cutmix = self._use_cutmix()
            lam = _beta(self.cutmix_alpha if use_cutmix else self.mixup_alpha)
            if use_cutmix:
                images, lam = _cutmix(images, lam)
            else:
                images = images * lam + images.flip(0) * (1.0 - lam)
        dtype = images.dtype if images.is_floating_point() else torch.float32
        smooth = smooth_one_hot(labels, self.num_classes, self.label_smoothing, dtype)  # (B, K)
        return images, smooth * lam + smooth.flip(0) * (1.0 - lam)

    def _mixes(self) -> bool:
        enabled = self.mixup_alpha > 0 or self.cutmix_alpha > 0
        return enabled and self.prob > 0 and torch.rand(()).item() < self.prob

    def _use_cutmix(self) -> bool:
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return torch.rand(()).item() < self.switch_prob
        return self.cutmix_alpha > 0


def _beta(alpha: float) -> float:
    """One draw from Beta(alpha, alpha) using torch's global RNG."""
    concentration = torch.tensor(float(alpha))
    return float(torch.distributions.Beta(concentration, concentration).sample())


def _cutmix(images: torch.Tensor, lam: float) -> tuple[torch.Tensor, float]:
    """Paste a random box of area ~(1-lam) from the reversed batch; returns (images, area-corrected lam)."""
    height, width = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
    cy = int(torch.randint(0, height, ()).item())
    cx = int(torch.randint(0, width, ()).item())
    y0, y1 = max(cy - half_h, 0), min(cy + half_h, height)
    x0, x1 = max(cx - half_w, 0), min(cx + half_w, width)
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images.flip(0)[:, :, y0:y1, x0:x1]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def smooth_one_hot(
    labels: torch.Tensor, num_classes: int, smoothing: float = 0.0, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """labels (B,) int -> (B, num_classes): 1 - smoothing + smoothing/K on the label, smoothing/K elsewhere."""
    off = smoothing / num_classes
    targets = torch.full((labels.shape[0], num_classes), off, dtype=dtype, device=labels.device)
    return targets.scatter_(1, labels.long().unsqueeze(1), 1.0 - smoothing + off)


def soft_target_cross_entropy(logits: torch.Tensor, soft_targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k target_k * log_softmax(logits)_k; logits, targets (B, K) -> scalar.

    Computed in float32 whatever the logits' dtype (safe under autocast).
    """
    log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32)  # (B, K)
    return -(soft_targets.float() * log_probs).sum(dim=-1).mean()


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross entropy for either kind of target.

    targets (B,) int labels -> ``F.cross_entropy(label_smoothing=label_smoothing)``;
    targets (B, K) float (from ``MixupCutmix``, already smoothed) -> ``soft_target_cross_entropy``.
    """
    if targets.is_floating_point() and targets.dim() == logits.dim():
        return soft_target_cross_entropy(logits, targets)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
