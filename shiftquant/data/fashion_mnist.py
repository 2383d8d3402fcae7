"""Fashion-MNIST from gzipped IDX files: Debian's ``dataset-fashion-mnist`` package is found
automatically; torchvision's download (into ``root``) is used only when ``download=True``."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import ImageDataModule, TensorImageDataset, random_crop_flip

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
MEAN, STD = 0.2860, 0.3530


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format): magic, dims as big-endian int32, then uint8 data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: {data.size} values, header says {dims.tolist()}")
    return data.reshape(dims)


def find_root(root: str | None) -> Path | None:
    """The first folder holding all four files: ``root``, ``root/FashionMNIST/raw``, Debian's."""
    candidates = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root else []
    for c in candidates + [DEBIAN_DIR]:
        if all((c / f).is_file() for pair in FILES.values() for f in pair):
            return c
    return None


class FashionMNISTDataModule(ImageDataModule):
    name, num_classes, channels = "fashion_mnist", 10, 1

    def __init__(self, root: str | None = None, download: bool = False, augment: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.root, self.download, self.augment = root, download, augment

    def check(self) -> None:
        """Fail before training when the files are nowhere to be found."""
        if find_root(self.root) is None and not self.download:
            raise DataError(
                f"Fashion-MNIST not found in data.root={self.root!r} nor {DEBIAN_DIR} "
                "(apt-get install dataset-fashion-mnist, or set data.download=true when online)")

    def _files(self) -> Path:
        found = find_root(self.root)
        if found is None and self.download:
            import torchvision
            torchvision.datasets.FashionMNIST(self.root or "data", download=True)
            found = find_root(self.root or "data")
        if found is None:
            self.check()
        return found

    def build(self):
        folder = self._files()
        sets = []
        for split in ("train", "test"):
            images_file, labels_file = FILES[split]
            x = torch.from_numpy(read_idx(folder / images_file).copy())[:, None]
            y = torch.from_numpy(read_idx(folder / labels_file).astype(np.int64))
            if len(x) != len(y):
                raise DataError(f"{folder}: {len(x)} {split} images but {len(y)} labels")
            sets.append((x, y))
        train_tf = _train_transform if self.augment else _normalize
        return (TensorImageDataset(*sets[0], transform=train_tf),
                TensorImageDataset(*sets[1], transform=_normalize))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - MEAN) / STD


def _train_transform(x: torch.Tensor) -> torch.Tensor:
    return random_crop_flip(_normalize(x), padding=2, flip=True)
