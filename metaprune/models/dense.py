"""CIFAR-style DenseNet-BC (feature concatenation) and ResNeXt (grouped convolutions).

Both take ``in_channels`` and adapt to small inputs (8x8 digits keep stride 1 in the stem), so they train
on CPU in seconds at small widths. DenseNet: every layer of a dense block appends ``growth`` channels
(BN-ReLU-1x1 conv to ``4*growth``, BN-ReLU-3x3 conv to ``growth``); transitions halve channels
(``compression``) and resolution. ResNeXt: bottleneck blocks 1x1 -> grouped 3x3 (``cardinality`` groups of
``base_width`` channels each, scaled per stage) -> 1x1, with projection shortcuts when shapes change.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cifar import _init
from .registry import register


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bottleneck: int = 4):
        super().__init__()
        mid = bottleneck * growth
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([x, out], dim=1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int, pool: bool):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = pool

    def forward(self, x):
        x = self.conv(F.relu(self.bn(x)))
        return F.avg_pool2d(x, 2) if self.pool else x


class DenseNet(nn.Module):
    def __init__(self, blocks=(4, 4, 4), growth: int = 12, compression: float = 0.5, num_classes: int = 10,
                 in_channels: int = 3, input_size: int = 32):
        super().__init__()
        c = 2 * growth
        self.stem = nn.Conv2d(in_channels, c, 3, padding=1, bias=False)
        layers, size = [], input_size
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                cout = max(1, int(c * compression))
                layers.append(Transition(c, cout, pool=size >= 4))
                size = size // 2 if size >= 4 else size
                c = cout
        self.features = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x):
        x = F.relu(self.bn(self.features(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("densenet")
def densenet(blocks: list | tuple = (4, 4, 4), growth: int = 12, compression: float = 0.5, num_classes: int = 10,
             in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """DenseNet-BC for small images; DenseNet-BC-100 (k=12) is ``blocks=(16, 16, 16)``."""
    return DenseNet(tuple(blocks), growth, compression, num_classes, in_channels, input_size)


class ResNeXtBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, cardinality: int, group_width: int):
        super().__init__()
        mid = cardinality * group_width
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNeXt(nn.Module):
    def __init__(self, depth: int = 11, cardinality: int = 4, base_width: int = 4, width: int = 32,
                 num_classes: int = 10, in_channels: int = 3, input_size: int = 32):
        super().__init__()
        if (depth - 2) % 9 != 0:
            raise ValueError(f"CIFAR ResNeXt depth must be 9n+2 (11, 20, 29), got {depth}")
        n = (depth - 2) // 9
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, cin, size = [], width, input_size
        for stage in range(3):
            cout = width * 2 ** (stage + 1)
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0 and size >= 4) else 1
                size //= stride
                blocks.append(ResNeXtBlock(cin, cout, stride, cardinality, base_width * 2 ** stage))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x):
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("resnext")
def resnext(depth: int = 11, cardinality: int = 4, base_width: int = 4, width: int = 32, num_classes: int = 10,
            in_channels: int = 3, input_size: int = 32) -> nn.Module:
    """CIFAR ResNeXt; ResNeXt-29 (8x64d) is ``depth=29, cardinality=8, base_width=64, width=64``."""
    return ResNeXt(depth, cardinality, base_width, width, num_classes, in_channels, input_size)
