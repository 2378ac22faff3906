"""layers.conv.conv2d: F.conv2d's values and gradients, by the faster backward route on channels_last CPU maps."""
import pytest
import torch
import torch.nn.functional as F

from vistra.layers.conv import conv2d

CASES = [  # (C_in, C_out, kernel, stride, padding, dilation, bias)
    (8, 12, 3, 1, 1, 1, False),
    (8, 12, 3, 2, 1, 1, True),
    (8, 12, 3, 1, 2, 2, True),
    (8, 16, 1, 2, 0, 1, False),  # ResNet's downsampling shortcut
    (8, 16, 1, 1, 0, 1, True),
]


def _grads(fn, x, weight, bias):
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    out = fn(x, weight, bias)
    (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
    return out.detach(), x.grad, weight.grad, None if bias is None else bias.grad


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,dilation,bias", CASES)
def test_conv2d_matches_f_conv2d_values_and_gradients(c_in, c_out, k, stride, padding, dilation, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c_in, 13, 10, generator=g).contiguous(memory_format=torch.channels_last)  # odd sizes
    weight = torch.randn(c_out, c_in, k, k, generator=g)
    b = torch.randn(c_out, generator=g) if bias else None
    ref = _grads(lambda x, w, b: F.conv2d(x.contiguous(), w, b, stride, padding, dilation), x, weight, b)
    ours = _grads(lambda x, w, b: conv2d(x, w, b, (stride, stride), (padding, padding), (dilation, dilation)),
                  x, weight, b)
    for a, r in zip(ours, ref):
        if r is not None:
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)


def test_conv2d_routes():
    x = torch.randn(1, 4, 9, 9).contiguous(memory_format=torch.channels_last)
    w3 = torch.randn(6, 4, 3, 3, requires_grad=True)
    assert "NchwWeightGrad" in type(conv2d(x, w3, None, (1, 1), (1, 1)).grad_fn).__name__  # 3x3 weight gradient
    sliced = conv2d(x, torch.randn(6, 4, 1, 1, requires_grad=True), None, (2, 2))
    assert sliced.shape == (1, 6, 5, 5) and "NchwWeightGrad" not in type(sliced.grad_fn).__name__
    with torch.no_grad():  # inference and NCHW inputs: F.conv2d itself
        torch.testing.assert_close(conv2d(x, w3, None, (1, 1), (1, 1)), F.conv2d(x, w3, None, 1, 1), rtol=0, atol=0)
    assert "NchwWeightGrad" not in type(conv2d(x.contiguous(), w3, None, (1, 1), (1, 1)).grad_fn).__name__
