"""CIFAR-style CNN families with depth and width knobs: ResNet (20/32/56/110), VGG-BN, MobileNetV2.

Shapes follow the input: ``in_channels`` and ``input_size`` come from the dataset, so the same
constructors serve 8x8 digits, 32x32 CIFAR and larger inputs.
"""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .registry import register


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            # 1x1 projection (option B): prunable, unlike zero-padded identity shortcuts
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 56, 110), got {depth}")
        n = (depth - 2) // 6
        widths = [width, 2 * width, 4 * width]
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        layers, cin = [], width
        for stage, w in enumerate(widths):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (stage > 0 and i == 0) else 1))
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


@register("resnet")
def resnet(depth: int = 20, width: int = 16, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    return CifarResNet(depth, width, num_classes, in_channels)


_VGG_CFG = {
    11: [1, 1, 2, 2, 2],
    13: [2, 2, 2, 2, 2],
    16: [2, 2, 3, 3, 3],
    19: [2, 2, 4, 4, 4],
}


class VGG(nn.Module):
    def __init__(self, depth=19, width=64, num_classes=10, in_channels=3, input_size=32):
        super().__init__()
        if depth not in _VGG_CFG:
            raise ValueError(f"VGG depth must be one of {sorted(_VGG_CFG)}, got {depth}")
        layers, cin, size = [], in_channels, input_size
        for stage, reps in enumerate(_VGG_CFG[depth]):
            cout = width * min(2**stage, 8)
            for _ in range(reps):
                layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
                cin = cout
            if size >= 2:  # small inputs (8x8 digits) keep their last stages at 1x1
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("vgg")
def vgg(depth: int = 19, width: int = 64, num_classes: int = 10, in_channels: int = 3, input_size: int = 32):
    return VGG(depth, width, num_classes, in_channels, input_size)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


def _round8(v: float) -> int:
    return max(8, int(v + 4) // 8 * 8)


class MobileNetV2(nn.Module):
    # (expand, channels, repeats, stride); CIFAR stem keeps resolution in the first stages
    SETTING = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, width_mult=1.0, num_classes=10, in_channels=3, last_channels=1280, stem_stride=1):
        super().__init__()
        cin = _round8(32 * width_mult)
        layers = [nn.Sequential(nn.Conv2d(in_channels, cin, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True))]
        for t, c, n, s in self.SETTING:
            cout = _round8(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _round8(last_channels * max(1.0, width_mult)) if width_mult > 1 else _round8(last_channels * width_mult)
        layers.append(nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last, num_classes)
        _init(self)

    def forward(self, x):
        x = self.features(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("mobilenet_v2")
def mobilenet_v2(width_mult: float = 1.0, num_classes: int = 10, in_channels: int = 3, last_channels: int = 1280,
                 stem_stride: int = 1):
    """MobileNetV2 with the CIFAR stem (stride 1); ``stem_stride=2`` quarters the cost of every stage."""
    return MobileNetV2(width_mult, num_classes, in_channels, last_channels, stem_stride)
