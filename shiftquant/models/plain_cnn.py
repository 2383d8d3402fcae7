"""LeNet-5 and a small VGG: the plain conv-BatchNorm-ReLU-pool networks of microcontrollers.

Both run integer-only with the ``deploy`` preset: a max pool takes the largest code of each window
after the requantization thresholds, and an average pool sums integers once the BatchNorm before
it is on the residual grid (``docs/export.md``).
"""
from __future__ import annotations

from torch import nn

POOLS = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


def lenet5(num_classes: int = 10, in_chans: int = 1, pool: str = "max") -> nn.Sequential:
    """LeNet-5's shape for 28 px inputs: 5x5 convs of 6 and 16 channels with BatchNorm and ReLU,
    each followed by a 2x2 ``pool`` (``max`` or ``avg``), and a linear head."""
    if pool not in POOLS:
        from ..errors import ConfigError
        raise ConfigError("pool", pool, " or ".join(POOLS))
    p = POOLS[pool]
    return nn.Sequential(nn.Conv2d(in_chans, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), p(2),
                         nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), p(2, ceil_mode=True),
                         nn.Flatten(), nn.Linear(16 * 5 * 5, num_classes))


def lenet5_avg(num_classes: int = 10, in_chans: int = 1) -> nn.Sequential:
    """:func:`lenet5` with average pools."""
    return lenet5(num_classes, in_chans, "avg")


def vgg_small(num_classes: int = 10, in_chans: int = 1, width: int = 8) -> nn.Sequential:
    """Two VGG stages (two 3x3 conv-BN-ReLU and a 2x2 max pool each, ``width`` and ``2 * width``
    channels), a global average pool and a linear head."""
    def stage(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*stage(in_chans, width), *stage(width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, num_classes))
