"""Plain-tensor views of vistra models, the form ONNX (and any graph exporter) wants: tensors in, a tuple of
tensors out, every input and output named.

    wrapper = wrap_for_export(model)                 # picks the family by model.arch
    wrapper(*example_inputs(wrapper, (224, 224)))    # -> tuple of tensors, in wrapper.output_names order

Families: classifiers (ViT, PVT, PVTv2, ResNet) and segmenters (images -> logits), DETR and Deformable DETR
(images [+ padding mask] -> pred_logits, pred_boxes; the earlier decoder layers' and the two-stage encoder's
outputs are training signals and are left out), the TransCenter tracker (frames t and t-1 -> its four maps).
"""
from __future__ import annotations

import math

import torch
from torch import nn

# Image sides of exported graphs are declared as multiples of this (or of a ViT's patch size): every stride-2
# stage then halves its input exactly, so the exporter's shape formulas stay simple and no size is special.
SIZE_MULTIPLE = 32

CLASSIFIERS = ("vit", "pvt", "pvt_v2", "resnet")
DETECTORS = ("detr", "deformable_detr")


class ExportWrapper(nn.Module):
    """A model with named plain-tensor inputs and outputs.

    input_names: the forward's arguments; image inputs are (B, 3, H, W), a padding mask (B, H, W) bool.
    output_names: the tensors forward returns, in order.
    size_multiple: image sides the model takes are multiples of this.
    coarsest_stride: the largest reduction of any feature map inside the model (image side / map side).
    task: "classify", "segment", "detect" or "track".
    """

    input_names: tuple[str, ...] = ("images",)
    output_names: tuple[str, ...] = ()
    task: str = ""

    def __init__(self, model: nn.Module, size_multiple: int = SIZE_MULTIPLE, coarsest_stride: int = SIZE_MULTIPLE):
        super().__init__()
        self.model = model
        self.size_multiple = size_multiple
        self.coarsest_stride = coarsest_stride


class ImageModelExport(ExportWrapper):
    """Classifier or segmenter: images (B, 3, H, W) -> logits, (B, num_classes) or (B, num_classes, H, W)."""

    output_names = ("logits",)

    def __init__(self, model: nn.Module, size_multiple: int, coarsest_stride: int, task: str):
        super().__init__(model, size_multiple, coarsest_stride)
        self.task = task

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.model(images),)


class DetectorExport(ExportWrapper):
    """DETR / Deformable DETR: images (B, 3, H, W) [, mask (B, H, W) bool, True = padding] ->
    pred_logits (B, Q, C) and pred_boxes (B, Q, 4), normalised cxcywh (see the models' forward)."""

    output_names = ("pred_logits", "pred_boxes")
    task = "detect"

    def __init__(self, model: nn.Module, size_multiple: int, coarsest_stride: int, with_mask: bool = False):
        super().__init__(model, size_multiple, coarsest_stride)
        self.with_mask = with_mask
        self.input_names = ("images", "mask") if with_mask else ("images",)

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images, mask)
        return out["pred_logits"], out["pred_boxes"]


class TrackerExport(ExportWrapper):
    """TransCenter: frames t and t-1, (B, 3, H, W) each and of the same size -> hm (B, C, H/4, W/4) heatmap logits,
    wh (B, 2, H/4, W/4) box sizes, reg (B, 2, H/4, W/4) sub-pixel offsets, tracking (B, 2, H/4, W/4) displacement
    from t to t-1 (in output-map pixels; vistra.tracking.centernet decodes them)."""

    input_names = ("images", "prev_images")
    output_names = ("hm", "wh", "reg", "tracking")
    task = "track"

    def forward(self, images: torch.Tensor, prev_images: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(images, prev_images)
        return out["hm"], out["wh"], out["reg"], out["tracking"]


def wrap_for_export(model: nn.Module, with_mask: bool = False) -> ExportWrapper:
    """The plain-tensor wrapper of a vistra model (an ExportWrapper is returned as it is).

    with_mask: detectors only, add the padding-mask input. ValueError for models of other families.
    """
    if isinstance(model, ExportWrapper):
        return model
    arch = getattr(model, "arch", None)
    if with_mask and arch not in DETECTORS:
        raise ValueError(f"a padding-mask input is for detectors ({', '.join(DETECTORS)}), not {arch or type(model).__name__}")
    if arch in CLASSIFIERS:
        stride = max(f["reduction"] for f in model.feature_info)
        return ImageModelExport(model, model.patch_size if arch == "vit" else SIZE_MULTIPLE, stride, "classify")
    if arch == "segmenter":
        return ImageModelExport(model, math.lcm(model.size_divisor, SIZE_MULTIPLE), model.size_divisor, "segment")
    if arch in DETECTORS:
        stride = model.backbone.strides[-1]
        if arch == "deformable_detr":  # the extra levels halve the last backbone map again and again
            stride <<= model.num_feature_levels - len(model.backbone.strides)
        return DetectorExport(model, math.lcm(model.backbone.size_divisibility, SIZE_MULTIPLE), stride, with_mask)
    if arch == "transcenter":
        return TrackerExport(model, SIZE_MULTIPLE, max(model.backbone.strides))
    known = ", ".join((*CLASSIFIERS, "segmenter", *DETECTORS, "transcenter"))
    raise ValueError(f"cannot export {type(model).__name__} (arch {arch!r}): exportable families are {known}")


def example_inputs(wrapper: ExportWrapper, size: tuple[int, int], batch: int = 1,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs for the wrapper at image size (H, W): standard-normal images, an all-valid mask."""
    H, W = size
    if H % wrapper.size_multiple or W % wrapper.size_multiple:
        raise ValueError(f"image size {H}x{W} is not a multiple of {wrapper.size_multiple}, which this model needs")
    dtype = next(wrapper.parameters()).dtype
    inputs = []
    for name in wrapper.input_names:
        if name == "mask":
            inputs.append(torch.zeros(batch, H, W, dtype=torch.bool))
        else:
            inputs.append(torch.randn(batch, 3, H, W, generator=generator, dtype=dtype))
    return tuple(inputs)


def round_size(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `multiple`."""
    return tuple(-(-int(s) // multiple) * multiple for s in size)  # type: ignore[return-value]

