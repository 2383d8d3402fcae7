"""Random images and labels for smoke runs (no files, any size)."""
from __future__ import annotations

import torch

from .base import ImageDataModule, Sources, TensorImageDataset


class SyntheticDataModule(ImageDataModule):
    name = "synthetic"

    def __init__(self, num_classes: int = 10, channels: int = 3, image_size: int = 32,
                 train_size: int = 256, test_size: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.channels, self.image_size = num_classes, channels, image_size
        self.train_size, self.test_size = train_size, test_size

    def build(self):
        g = torch.Generator().manual_seed(self.seed)
        n = self.train_size + self.test_size
        x = torch.randn(n, self.channels, self.image_size, self.image_size, generator=g)
        y = torch.randint(0, self.num_classes, (n,), generator=g)
        t = self.train_size
        train = TensorImageDataset(x[:t], y[:t])
        return Sources(train, train, TensorImageDataset(x[t:], y[t:]))
