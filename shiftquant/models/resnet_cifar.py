"""CIFAR-style ResNets (He et al. 2016, §4.2): a 3x3 stem, stages of BasicBlocks, global pooling.

Module names follow torchvision (``layerK.J.conv1``, ``downsample``), so the recipes' layer patterns
select the same convolutions here as in a torchvision ResNet. Downsampling shortcuts are 1x1
convolutions with BatchNorm (option B of the paper).
"""
from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int = 3, widths: tuple[int, ...] = (16, 32, 64),
                 num_classes: int = 10, in_chans: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(blocks_per_stage):
                downsample = None
                if j == 0 and (stride != 1 or in_planes != width):
                    downsample = nn.Sequential(nn.Conv2d(in_planes, width, 1, stride, bias=False),
                                               nn.BatchNorm2d(width))
                blocks.append(BasicBlock(in_planes, width, stride if j == 0 else 1, downsample))
                in_planes = width
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


def resnet20(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """ResNet-20: three stages of three BasicBlocks, 16/32/64 channels (0.27 M parameters)."""
    return CifarResNet(3, (16, 32, 64), num_classes, in_chans)


def resnet8(num_classes: int = 10, in_chans: int = 3) -> CifarResNet:
    """ResNet-8, the shape of MLPerf Tiny's image-classification model: three stages of one
    BasicBlock, 16/32/64 channels (78 k parameters; 12.5 M MACs at 32x32)."""
    return CifarResNet(1, (16, 32, 64), num_classes, in_chans)


def resnet_tiny(num_classes: int = 10, in_chans: int = 1) -> CifarResNet:
    """A two-stage, one-block ResNet (16/32 channels) for 8x8 digits: seconds per epoch on a CPU."""
    return CifarResNet(1, (16, 32), num_classes, in_chans)
