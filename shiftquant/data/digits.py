"""scikit-learn's bundled 8x8 digits (1,797 images, 10 classes): the embedded default data.

A fixed 20 % is the test set; the validation split comes out of the other 80 %."""
from __future__ import annotations

import torch

from .base import ImageDataModule, Sources, TensorImageDataset


class DigitsDataModule(ImageDataModule):
    name, num_classes, channels = "digits", 10, 1
    mean, std, pixel_max = (0.3,), (0.4,), 16.0  # pixels are 0..16

    def __init__(self, test_fraction: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.test_fraction = test_fraction

    def build(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / self.pixel_max
        x = (x - self.mean[0]) / self.std[0]  # roughly zero mean, unit variance
        y = torch.tensor(digits.target)
        g = torch.Generator().manual_seed(1234)  # a fixed split, whatever the run's seed
        perm = torch.randperm(len(y), generator=g)
        n_test = int(round(len(y) * self.test_fraction))
        test, train = perm[:n_test], perm[n_test:]
        train_set = TensorImageDataset(x[train], y[train])
        return Sources(train_set, train_set, TensorImageDataset(x[test], y[test]))
