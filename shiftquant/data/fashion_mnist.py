"""Fashion-MNIST from gzipped IDX files: from ``data.root`` when it is set (and only there), else
from Debian's ``dataset-fashion-mnist`` package; torchvision's download (into ``root``) is used only
when ``download=True``. The run log names the files read."""
from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import ImageDataModule, Sources, TensorImageDataset, random_crop_flip

log = logging.getLogger(__name__)

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


def _holds_files(folder: Path) -> bool:
    return all((folder / f).is_file() for pair in FILES.values() for f in pair)


def find_root(root: str | None) -> Path | None:
    """Where the four files are: in ``root`` or ``root/FashionMNIST/raw`` when ``root`` is set
    (and nowhere else), in Debian's package folder when it is not."""
    candidates = [Path(root), Path(root) / "FashionMNIST" / "raw"] if root else [DEBIAN_DIR]
    return next((c for c in candidates if _holds_files(c)), None)


class FashionMNISTDataModule(ImageDataModule):
    name, num_classes, channels = "fashion_mnist", 10, 1
    mean, std = (MEAN,), (STD,)

    def __init__(self, root: str | None = None, download: bool = False, augment: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.root, self.download, self.augment = root, download, augment

    def check(self) -> None:
        """Fail before training when the files are not where the config says."""
        super().check()
        if self.download or find_root(self.root) is not None:
            return
        expected = ", ".join(f for pair in FILES.values() for f in pair)
        if self.root:
            raise DataError(f"data.root={self.root!r} does not hold Fashion-MNIST: expected {expected} in it "
                            "(or in FashionMNIST/raw/ below it); set data.download=true to fetch them there, "
                            "or leave data.root unset to use Debian's dataset-fashion-mnist package")
        raise DataError(f"Fashion-MNIST not found: data.root is not set and {DEBIAN_DIR} does not hold {expected} "
                        "(apt-get install dataset-fashion-mnist, or set data.root=FOLDER)")

    def _files(self) -> Path:
        found = find_root(self.root)
        if found is None and self.download:
            import torchvision
            torchvision.datasets.FashionMNIST(self.root or "data", download=True)
            found = find_root(self.root or "data")
        if found is None:
            self.check()
        return found

    def build(self) -> Sources:
        folder = self._files()
        sets = []
        for split in ("train", "test"):
            images_file, labels_file = FILES[split]
            log.info("Fashion-MNIST %s: reading %s and %s", split, folder / images_file, folder / labels_file)
            x = torch.from_numpy(read_idx(folder / images_file).copy())[:, None]
            y = torch.from_numpy(read_idx(folder / labels_file).astype(np.int64))
            if len(x) != len(y):
                raise DataError(f"{folder}: {len(x)} {split} images but {len(y)} labels")
            sets.append((x, y))
        train_tf = _train_transform if self.augment else _normalize
        return Sources(TensorImageDataset(*sets[0], transform=train_tf),
                       TensorImageDataset(*sets[0], transform=_normalize),
                       TensorImageDataset(*sets[1], transform=_normalize))


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255.0 - MEAN) / STD


def _train_transform(x: torch.Tensor) -> torch.Tensor:
    return random_crop_flip(_normalize(x), padding=2, flip=True)
