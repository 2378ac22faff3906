"""ResNet (He et al., 2016), v1.5 (stride in the 3x3 conv), the convolutional backbone of DETR.

Module names are torchvision's (conv1, bn1, layer1..layer4, fc; blocks conv1/bn1/.../downsample.{0,1}), so
torchvision and timm ImageNet weights load as they are. Detection uses FrozenBatchNorm2d (statistics and affine
parameters are buffers) and, for DC5, dilation instead of stride in the last stage.

Speed: a frozen BatchNorm is folded into the convolution before it on every forward (one conv with a bias
instead of conv + a full pass over the map), and the backbone runs in channels_last, which oneDNN prefers on CPU;
in training, layers.conv.conv2d takes the faster route to the weight gradients there.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from vistra.layers import DropPath, drop_path_rates
from vistra.layers.conv import conv2d
from vistra.registry import register_model


@dataclass
class ResNetConfig:
    block: str = "bottleneck"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101)
    layers: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    in_chans: int = 3
    num_classes: int = 1000
    norm_layer: str = "batch"  # "batch" (trainable BatchNorm2d) or "frozen" (FrozenBatchNorm2d, detection)
    replace_stride_with_dilation: list[bool] = field(default_factory=lambda: [False, False, False])  # layer2..4
    zero_init_residual: bool = False
    drop_rate: float = 0.0  # dropout before fc
    drop_path_rate: float = 0.0  # stochastic depth over the residual branches
    channels_last: bool = True  # run the convolutions in channels_last memory format


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all buffers: y = (x - mean) / sqrt(var + eps) * w + b.

    Same buffers as nn.BatchNorm2d minus num_batches_tracked (dropped on load), eps 1e-5 as torchvision's.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The affine map this norm applies per channel: y = x * scale + shift, each (C,)."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        scale, shift = self.scale_shift()
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def conv_norm(x: torch.Tensor, conv: nn.Conv2d, norm: nn.Module) -> torch.Tensor:
    """norm(conv(x)); a FrozenBatchNorm2d is folded into the convolution's weight and bias (exact up to rounding)."""
    if not isinstance(norm, FrozenBatchNorm2d):
        return norm(conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups))
    scale, shift = norm.scale_shift()
    weight = conv.weight * scale.view(-1, 1, 1, 1)  # (C_out, C_in, k, k)
    return conv2d(x, weight, shift, conv.stride, conv.padding, conv.dilation, conv.groups)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "frozen":
        return FrozenBatchNorm2d(channels)
    raise ValueError(f"norm_layer must be 'batch' or 'frozen', got {kind!r}")


def _conv3x3(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34): relu(x' + bn2(conv2(relu(bn1(conv1(x)))))), x' = downsample(x) or x."""

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None, norm: str,
                 drop_path: float):
        super().__init__()
        self.conv1 = _conv3x3(c_in, planes, stride, dilation)
        self.bn1 = _norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = _norm(norm, planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, planes, H/stride, W/stride)."""
        identity = x if self.downsample is None else conv_norm(x, self.downsample[0], self.downsample[1])
        out = conv_norm(x, self.conv1, self.bn1).relu_()
        out = conv_norm(out, self.conv2, self.bn2)
        out = self.drop_path(out)
        out += identity
        return out.relu_()


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (stride, dilation) -> 1x1 expand (x4), plus the shortcut; ResNet v1.5 as torchvision."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None, norm: str,
                 drop_path: float):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = _norm(norm, planes)
        self.conv2 = _conv3x3(planes, planes, stride, dilation)
        self.bn2 = _norm(norm, planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = _norm(norm, planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.drop_path = DropPath(drop_path)

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, 4 * planes, H/stride, W/stride)."""
        identity = x if self.downsample is None else conv_norm(x, self.downsample[0], self.downsample[1])
        out = conv_norm(x, self.conv1, self.bn1).relu_()
        out = conv_norm(out, self.conv2, self.bn2).relu_()
        out = conv_norm(out, self.conv3, self.bn3)
        out = self.drop_path(out)
        out += identity
        return out.relu_()


class ResNet(nn.Module):
    """ResNet classifier; also a backbone (forward_pyramid gives C2..C5 at strides 4, 8, 16, 32).

    With replace_stride_with_dilation=[False, False, True] (DC5) the last stage keeps stride 16 and uses dilation 2.
    """

    arch = "resnet"

    def __init__(self, config: ResNetConfig):
        super().__init__()
        c = self.config = config
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[c.block]
        if len(c.replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation needs 3 flags (layer2..4), "
                             f"got {c.replace_stride_with_dilation}")
        self.num_classes = c.num_classes
        self.conv1 = nn.Conv2d(c.in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(c.norm_layer, 64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        rates = iter(drop_path_rates(c.drop_path_rate, sum(c.layers)))
        c_in, stride_total, dilation = 64, 4, 1
        self.feature_info = []
        for s, (planes, depth) in enumerate(zip((64, 128, 256, 512), c.layers)):
            stride = 1 if s == 0 else 2
            first_dilation = dilation
            if s > 0 and c.replace_stride_with_dilation[s - 1]:
                dilation, stride = dilation * stride, 1
            stride_total *= stride
            blocks, c_in = self._make_layer(block, c_in, planes, depth, stride, first_dilation, dilation, rates)
            setattr(self, f"layer{s + 1}", blocks)
            self.feature_info.append({"num_chs": c_in, "reduction": stride_total, "module": f"layer{s + 1}"})
        self.num_features = c_in
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(c.drop_rate)
        self.fc = nn.Linear(c_in, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def _make_layer(self, block, c_in: int, planes: int, depth: int, stride: int, first_dilation: int, dilation: int,
                    rates) -> tuple[nn.Sequential, int]:
        c_out = planes * block.expansion
        downsample = None
        if stride != 1 or c_in != c_out:
            downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                       _norm(self.config.norm_layer, c_out))
        blocks = [block(c_in, planes, stride, first_dilation, downsample, self.config.norm_layer, next(rates))]
        blocks += [block(c_out, planes, 1, dilation, None, self.config.norm_layer, next(rates))
                   for _ in range(depth - 1)]
        return nn.Sequential(*blocks), c_out

    def reset_parameters(self) -> None:
        """torchvision's initialisation: Kaiming-normal (fan_out) convs, unit norms; optionally zero last norms."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                with torch.no_grad():
                    m.weight.fill_(1.0)
                    m.bias.zero_()
        if self.config.zero_init_residual:  # each residual branch starts as zero (after the loop above)
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    with torch.no_grad():
                        m.last_norm().weight.zero_()

    def no_weight_decay(self) -> set[str]:
        return set()

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 64, H/4, W/4)."""
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.maxpool(conv_norm(x, self.conv1, self.bn1).relu_())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> C5 map (B, num_features, H/32, W/32)."""
        x = self._stem(x)
        for s in range(4):
            x = getattr(self, f"layer{s + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """C5 map (B, C, h, w) -> logits (B, num_classes) from the global average."""
        return self.fc(self.drop(self.avgpool(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, num_classes)."""
        return self.forward_head(self.forward_features(x))

    def forward_pyramid(self, x: torch.Tensor, out_indices: Sequence[int] = (0, 1, 2, 3)) -> list[torch.Tensor]:
        """(B, 3, H, W) -> maps (B, C_s, H/stride_s, W/stride_s) of the stages in out_indices (0 = C2 ... 3 = C5)."""
        x = self._stem(x)
        maps = []
        for s in range(max(out_indices) + 1):
            x = getattr(self, f"layer{s + 1}")(x)
            maps.append(x)
        return [maps[i] for i in out_indices]


_DEPTHS = {
    18: ("basic", [2, 2, 2, 2]),
    34: ("basic", [3, 4, 6, 3]),
    50: ("bottleneck", [3, 4, 6, 3]),
    101: ("bottleneck", [3, 4, 23, 3]),
}


def _resnet(depth: int, **overrides) -> ResNet:
    block, layers = _DEPTHS[depth]
    return ResNet(ResNetConfig(block=block, layers=layers, **overrides))


@register_model
def resnet18(**kw) -> ResNet:
    """ResNet-18: basic blocks [2, 2, 2, 2], 512 channels at C5 (11.7M parameters)."""
    return _resnet(18, **kw)


@register_model
def resnet34(**kw) -> ResNet:
    """ResNet-34: basic blocks [3, 4, 6, 3] (21.8M parameters)."""
    return _resnet(34, **kw)


@register_model
def resnet50(**kw) -> ResNet:
    """ResNet-50: bottlenecks [3, 4, 6, 3], 2048 channels at C5 (25.6M parameters)."""
    return _resnet(50, **kw)


@register_model
def resnet101(**kw) -> ResNet:
    """ResNet-101: bottlenecks [3, 4, 23, 3] (44.5M parameters)."""
    return _resnet(101, **kw)
