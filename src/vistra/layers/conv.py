"""2-D convolution for channels_last maps on CPU, with the backward passes oneDNN runs fastest.

Same result as F.conv2d (up to float rounding); only the route to it differs, measured at DETR-R50's training
shapes (800x1066, batch 2, 2 threads):
- a 3x3 convolution's weight gradient is 1.3-3x slower in channels_last than in NCHW, while its forward and input
  gradient are as fast or faster; so the forward and input gradient stay channels_last and the weight gradient
  alone is computed on NCHW copies of the input and the output gradient;
- a strided 1x1 convolution (ResNet's downsampling shortcut) has a slow backward in either layout (0.6 s for
  layer2's at that size); it is the same as a 1x1 convolution of every stride-th pixel, whose backward is a
  plain matrix product (layer2's: 0.58 s -> 0.16 s).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_Pair = tuple[int, int]


class _Conv2dNchwWeightGrad(torch.autograd.Function):
    """F.conv2d whose weight gradient is computed in NCHW (the input stays channels_last everywhere else)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride: _Pair, padding: _Pair, dilation: _Pair, groups: int):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (list(stride), list(padding), list(dilation), groups)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad_out, x, weight, None, stride, padding, dilation, False,
                                                         [0, 0], groups, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = torch.ops.aten.convolution_backward(
                grad_out.contiguous(), x.contiguous(), weight.contiguous(), None, stride, padding, dilation, False,
                [0, 0], groups, [False, True, False])[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: _Pair = (1, 1),
           padding: _Pair = (0, 0), dilation: _Pair = (1, 1), groups: int = 1) -> torch.Tensor:
    """F.conv2d: (B, C_in, H, W) -> (B, C_out, H', W'), routed for a fast backward when it will be differentiated
    on a channels_last CPU input, outside torch.compile (otherwise F.conv2d itself)."""
    stride, padding, dilation = tuple(stride), tuple(padding), tuple(dilation)
    if (x.dim() != 4 or x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last)
            or torch.compiler.is_compiling()):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    training = torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)
    if training and weight.shape[-2:] == (1, 1) and padding == (0, 0) and stride != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]].contiguous(memory_format=torch.channels_last)  # (B, C_in, H', W')
        return F.conv2d(x, weight, bias, 1, 0, 1, groups)
    if training and weight.requires_grad and weight.shape[-2:] != (1, 1):
        return _Conv2dNchwWeightGrad.apply(x, weight, bias, stride, padding, dilation, groups)
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
