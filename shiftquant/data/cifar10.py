"""CIFAR-10 from torchvision's files under ``root`` (downloaded only when ``download=True``)."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import ImageDataModule, Sources

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class CIFAR10DataModule(ImageDataModule):
    name, num_classes, channels = "cifar10", 10, 3
    mean, std = MEAN, STD

    def __init__(self, root: str | None = None, download: bool = False, augment: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.root, self.download, self.augment = root, download, augment

    def check(self) -> None:
        super().check()
        if not self.root:
            raise DataError("data.root is empty: allowed a folder holding cifar-10-batches-py")
        if not self.download and not (Path(self.root) / "cifar-10-batches-py").is_dir():
            raise DataError(f"data.root={self.root!r} has no cifar-10-batches-py folder "
                            "(set data.download=true when online)")

    def build(self):
        import torchvision.transforms as T
        from torchvision.datasets import CIFAR10

        self.check()
        normalize = [T.ToTensor(), T.Normalize(MEAN, STD)]
        train_tf = T.Compose(([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if self.augment else [])
                             + normalize)
        plain = T.Compose(normalize)
        return Sources(CIFAR10(self.root, train=True, transform=train_tf, download=self.download),
                       CIFAR10(self.root, train=True, transform=plain, download=False),
                       CIFAR10(self.root, train=False, transform=plain, download=self.download))
