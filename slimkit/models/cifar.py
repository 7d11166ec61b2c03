"""CIFAR networks from the pruning papers that no library ships: ResNet-20/56/110 and VGG-16/19.

Both papers slimkit implements report CIFAR-10 results on these networks (Wang et al., AAAI 2020,
"Pruning from Scratch": ResNet-20/56/110, VGG-16/19; Liu et al., ICLR 2019, "Rethinking the Value
of Network Pruning": VGG-16/19 with BatchNorm, ResNet-56/110). They take 32x32 inputs.

* ``resnet20/56/110`` follow He et al. 2016 (section 4.2): a 3x3 stem conv with 16 channels,
  three stages of n BasicBlocks with 16/32/64 channels (n = 3, 9, 18), global average pooling
  and a linear classifier (depth = 6n + 2). Shortcuts that change shape use **option B**, a
  1x1 convolution + BatchNorm projection, not option A. Option A zero-pads the missing channels
  with counts stored as Python integers inside ``forward``; a generic channel-resizing generator
  only rewrites module attributes, so it cannot thin such a shortcut. Option B adds about 2.7k
  parameters (0.3%) and 0.26M MACs (0.2%) to ResNet-56.
* ``vgg16_cifar/vgg19_cifar`` follow the CIFAR VGG of Liu et al.'s code: conv3x3 (no bias) +
  BN + ReLU per layer, 2x2 max pooling between stages, then one linear layer on the 512 pooled
  features. Pooling is ``AdaptiveAvgPool2d(1)`` (the original uses a fixed 2x2 average pool,
  identical at 32x32) so other input sizes still work.

Every channel count lives in a module attribute (conv/BN/linear sizes) and the forward passes use
only plain modules, ``+`` and ``torch.flatten``, so the models trace with ``torch.export`` and
slimkit's generator can resize them like any other model. Builders take
``num_classes`` and ``in_chans`` and set ``default_input_size = (in_chans, 32, 32)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = [
    "BUILTIN_DESCRIPTIONS",
    "BUILTIN_MODELS",
    "BasicBlock",
    "CifarResNet",
    "CifarVGG",
    "resnet20",
    "resnet56",
    "resnet110",
    "vgg16_cifar",
    "vgg19_cifar",
]

# "M" marks a 2x2 max pool; numbers are conv3x3 output channels (Liu et al. 2019, vgg.py).
VGG_CFGS: dict[int, list[int | str]] = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [
        64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
        512, 512, 512, 512, "M", 512, 512, 512, 512,
    ],
}  # fmt: skip


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out, relu) convs and identity BatchNorm, as in both papers' code."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual add; option-B projection when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. (2016) CIFAR ResNet: depth 6n + 2, stages of 16/32/64 channels."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        self.default_input_size = (in_chans, 32, 32)
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        in_channels = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks: list[nn.Module] = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(in_channels, width, stride if j == 0 else 1))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class CifarVGG(nn.Module):
    """VGG with BatchNorm for CIFAR (Liu et al. 2019): conv stack, global pool, one linear layer."""

    def __init__(self, cfg: Sequence[int | str], num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.default_input_size = (in_chans, 32, 32)
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        in_channels = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                continue
            assert isinstance(v, int), f"VGG cfg entries are ints or 'M', got {v!r}"
            layers += [
                nn.Conv2d(in_channels, v, 3, padding=1, bias=False),
                nn.BatchNorm2d(v),
                nn.ReLU(inplace=True),
            ]
            in_channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(in_channels, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier(x)


def _cifar_resnet(depth: int, num_classes: int, in_chans: int) -> CifarResNet:
    # Two convs per block, three stages, plus stem and classifier: depth = 6n + 2.
    assert (depth - 2) % 6 == 0, f"CIFAR ResNet depth must be 6n + 2, got {depth}"
    return CifarResNet((depth - 2) // 6, num_classes=num_classes, in_chans=in_chans)


def resnet20(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage), about 0.27M parameters and 41M MACs."""
    return _cifar_resnet(20, num_classes, in_chans)


def resnet56(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage), about 0.86M parameters and 126M MACs."""
    return _cifar_resnet(56, num_classes, in_chans)


def resnet110(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """ResNet-110 for CIFAR (18 blocks per stage), about 1.7M parameters and 253M MACs."""
    return _cifar_resnet(110, num_classes, in_chans)


def vgg16_cifar(num_classes: int = 10, in_chans: int = 3) -> CifarVGG:
    """VGG-16 with BatchNorm for CIFAR, about 14.7M parameters and 313M MACs."""
    return CifarVGG(VGG_CFGS[16], num_classes=num_classes, in_chans=in_chans)


def vgg19_cifar(num_classes: int = 10, in_chans: int = 3) -> CifarVGG:
    """VGG-19 with BatchNorm for CIFAR, about 20.0M parameters and 399M MACs."""
    return CifarVGG(VGG_CFGS[19], num_classes=num_classes, in_chans=in_chans)


BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "vgg16_cifar": vgg16_cifar,
    "vgg19_cifar": vgg19_cifar,
}

BUILTIN_DESCRIPTIONS: dict[str, str] = {
    "resnet20": "CIFAR ResNet-20 (He et al. 2016), 16/32/64 channels, option-B shortcuts, 32x32",
    "resnet56": "CIFAR ResNet-56 (He et al. 2016), 16/32/64 channels, option-B shortcuts, 32x32",
    "resnet110": "CIFAR ResNet-110 (He et al. 2016), 16/32/64 channels, option-B shortcuts, 32x32",
    "vgg16_cifar": "CIFAR VGG-16 with BatchNorm (Liu et al. 2019), global pool + 1 linear, 32x32",
    "vgg19_cifar": "CIFAR VGG-19 with BatchNorm (Liu et al. 2019), global pool + 1 linear, 32x32",
}
