"""The data module all datasets share: seeded shuffling, subsets, loaders, calibration batches."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import NamedTuple

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from ..errors import DataError

log = logging.getLogger(__name__)


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


def dataset_labels(ds: Dataset) -> torch.Tensor:
    """The class label of every item, read without loading images where the dataset keeps them."""
    for attr in ("labels", "targets"):
        if hasattr(ds, attr):
            return torch.as_tensor(getattr(ds, attr)).long()
    return torch.tensor([int(ds[i][1]) for i in range(len(ds))])


def stratified_split(labels: torch.Tensor, n_val: int, seed: int) -> tuple[list[int], list[int]]:
    """``(train, val)`` indices: ``n_val`` items drawn per class in proportion to its size (largest
    remainders first), from a permutation that depends only on ``seed``. Both lists are sorted."""
    n = len(labels)
    if not 0 < n_val < n:
        raise DataError(f"data.val_size={n_val} is invalid: allowed 1 to {n - 1} of the {n} training images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    classes, counts = labels.unique(return_counts=True)
    exact = counts.double() * n_val / n
    quota = exact.floor().long()
    order = sorted(range(len(classes)), key=lambda i: (-(exact[i] - quota[i]).item(), i))
    for i in order[:n_val - int(quota.sum())]:
        quota[i] += 1
    shuffled = labels[perm]
    val = torch.cat([perm[shuffled == c][:q] for c, q in zip(classes.tolist(), quota.tolist())])
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[val] = True
    return torch.nonzero(~chosen).flatten().tolist(), torch.nonzero(chosen).flatten().tolist()


def default_val_size(n_train: int) -> int:
    """About 10 % of the training images, at most 5,000."""
    return max(1, min(5000, round(0.1 * n_train)))


def describe_splits(sizes: dict) -> str:
    """The split sizes in words; where ``train_subset`` drew fewer training images, why the
    validation split did not shrink with them."""
    train = f"{sizes['train']} train"
    val = f"{sizes['val']} validation (from the training images)"
    pool = sizes.get("train_pool", sizes["train"])
    if sizes["train"] < pool:
        train += f" (a seeded subset of {pool})"
        val = (f"{sizes['val']} validation (carved out of the training images before train_subset, so that runs "
               "on any subset share one validation split; data.val_subset draws fewer)")
    return f"{train}, {val}, {sizes['test']} test images"


class Sources(NamedTuple):
    """What a data module reads: the training images with augmentation, the same images without
    (the validation split is carved out of them), and the test set."""

    train: Dataset
    train_plain: Dataset
    test: Dataset


class ImageDataModule(L.LightningDataModule):
    """Train, validation and test splits of one dataset.

    Subclasses implement :meth:`build`. The validation split is carved out of the training images
    (seeded by ``split_seed``, stratified by class, ``val_size`` images: a count, a fraction, or
    by default :func:`default_val_size`); monitors and early stopping read it, and the test set is
    read only by the final evaluation. ``*_subset`` draw a seeded subset of each split.
    """

    num_classes: int
    channels: int
    name: str
    # The input normalization ``(pixel / pixel_max - mean) / std`` per channel; None where the
    # inputs are not images of integer pixels (synthetic data).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pixel_max: float = 255.0

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0,
                 train_subset: int | None = None, val_subset: int | None = None, test_subset: int | None = None,
                 val_size: int | float | None = None, split_seed: int = 0):
        super().__init__()
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_subset, self.val_subset, self.test_subset = train_subset, val_subset, test_subset
        self.val_size, self.split_seed = val_size, split_seed
        self.train_set = self.val_set = self.test_set = None

    def build(self) -> Sources:  # pragma: no cover - abstract
        raise NotImplementedError

    def check(self) -> None:
        """Fail before training on a bad value or missing files (subclasses add their own checks)."""
        v = self.val_size
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or (isinstance(v, float) and not 0 < v < 1) or (isinstance(v, int) and v < 1)):
            raise DataError(f"data.val_size={v!r} is invalid: allowed null (10 % of the training images, "
                            "at most 5,000), a count >= 1 or a fraction in (0, 1)")

    def _val_count(self, n_train: int) -> int:
        if self.val_size is None:
            return default_val_size(n_train)
        if isinstance(self.val_size, float):
            return max(1, round(self.val_size * n_train))
        return self.val_size

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.check()
        sources = self.build()
        train_idx, val_idx = stratified_split(dataset_labels(sources.train_plain),
                                              self._val_count(len(sources.train_plain)), self.split_seed)
        self.train_pool = len(train_idx)  # training images before train_subset
        self.train_set = self._subset(Subset(sources.train, train_idx), self.train_subset)
        self.val_set = self._subset(Subset(sources.train_plain, val_idx), self.val_subset)
        self.test_set = self._subset(sources.test, self.test_subset)
        log.info("%s: %s", self.name, describe_splits(self.split_sizes))

    @property
    def split_sizes(self) -> dict[str, int]:
        self.setup()
        return {"train": len(self.train_set), "val": len(self.val_set), "test": len(self.test_set),
                "train_pool": self.train_pool}

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
        return self._loader(self.test_set)

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
