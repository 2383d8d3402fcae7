"""The data module all datasets share: seeded shuffling, subsets, loaders, calibration batches."""
from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset


class SeededRandomSampler(Sampler[int]):
    """A shuffle that depends only on ``(seed, epoch)``: a resumed run sees the same order.

    Lightning calls :meth:`set_epoch` at the start of every training epoch.
    """

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())

    def __len__(self) -> int:
        return self.length


class TensorImageDataset(Dataset):
    """Images held in memory as a uint8 or float tensor (N, C, H, W), with an optional transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels.long(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.labels[i]


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool) -> torch.Tensor:
    """Pad-and-crop plus horizontal flip on one (C, H, W) tensor, using the global torch RNG."""
    c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    i, j = torch.randint(0, 2 * padding + 1, (2,)).tolist()
    x = padded[:, i:i + h, j:j + w]
    if flip and torch.rand(()) < 0.5:
        x = x.flip(-1)
    return x


class ImageDataModule(L.LightningDataModule):
    """Subclasses implement :meth:`build` returning ``(train, val)`` datasets; val is also test."""

    num_classes: int
    channels: int
    name: str

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 train_subset: int | None = None, val_subset: int | None = None):
        super().__init__()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_subset, self.val_subset = train_subset, val_subset
        self.train_set = self.val_set = None

    def build(self) -> tuple[Dataset, Dataset]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val = self.build()
        self.train_set = self._subset(train, self.train_subset)
        self.val_set = self._subset(val, self.val_subset)

    def _subset(self, ds: Dataset, n: int | None) -> Dataset:
        if n is None or n >= len(ds):
            return ds
        g = torch.Generator().manual_seed(self.seed)
        return Subset(ds, torch.randperm(len(ds), generator=g)[:n].tolist())

    def _loader(self, ds: Dataset, sampler=None) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, SeededRandomSampler(len(self.train_set), self.seed))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def calibration_batches(self, n_batches: int) -> list[torch.Tensor]:
        """The first ``n_batches`` training inputs in dataset order (no RNG is consumed)."""
        self.setup()
        loader = DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False)
        out = []
        for x, _ in loader:
            out.append(x)
            if len(out) == n_batches:
                break
        return out
