"""ImageNet-style folders: ``root/train/CLASS/*.jpg`` and ``root/val/CLASS/*.jpg``.

The official ``val/`` is the test set; the validation split is carved out of ``train/``.

Transforms: ``augment="seed"`` is the seed paper's (resize the shorter side to 256, random crop 224,
no flip; METHOD.md §4); ``augment="rrc"`` the usual RandomResizedCrop + flip. Validation: resize
256, center crop 224. ``image_size`` scales both (resize = image_size * 256 / 224).
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from ..errors import DataError
from .base import ImageDataModule, Sources

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AUGMENTS = ("seed", "rrc", "none")


def load_rgb(path: str) -> Image.Image:
    """Open an image as RGB; an unreadable file is reported with its path."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except Exception as exc:  # PIL raises many types for a bad file
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from None


class ImageNetDataModule(ImageDataModule):
    name, channels = "imagenet", 3
    mean, std = MEAN, STD

    def __init__(self, root: str | None = None, image_size: int = 224, augment: str = "seed", **kwargs):
        super().__init__(**kwargs)
        self.root, self.image_size, self.augment = root, image_size, augment
        self.num_classes = None

    def check(self) -> None:
        super().check()
        if not self.root:
            raise DataError("data.root is empty: allowed a folder with train/ and val/ class folders")
        for split in ("train", "val"):
            if not (Path(self.root) / split).is_dir():
                raise DataError(f"data.root={self.root!r} has no {split}/ folder")
        if self.augment not in AUGMENTS:
            raise DataError(f"data.augment={self.augment!r} is invalid: allowed {AUGMENTS}")

    def transforms(self):
        import torchvision.transforms as T

        size, resize = self.image_size, round(self.image_size * 256 / 224)
        norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
        train = {"seed": [T.Resize(resize), T.RandomCrop(size)],
                 "rrc": [T.RandomResizedCrop(size), T.RandomHorizontalFlip()],
                 "none": [T.Resize(resize), T.CenterCrop(size)]}[self.augment]
        return T.Compose(train + norm), T.Compose([T.Resize(resize), T.CenterCrop(size)] + norm)

    def build(self):
        from torchvision.datasets import ImageFolder

        self.check()
        train_tf, val_tf = self.transforms()
        train = ImageFolder(str(Path(self.root) / "train"), transform=train_tf, loader=load_rgb)
        val = ImageFolder(str(Path(self.root) / "val"), transform=val_tf, loader=load_rgb)
        if train.classes != val.classes:
            only_train = sorted(set(train.classes) - set(val.classes))[:5]
            only_val = sorted(set(val.classes) - set(train.classes))[:5]
            raise DataError(f"train and val classes differ under {self.root}: only in train {only_train}, "
                            f"only in val {only_val}")
        self.num_classes = len(train.classes)
        # The official val set is the test set; the validation split comes out of train.
        plain = ImageFolder(str(Path(self.root) / "train"), transform=val_tf, loader=load_rgb)
        return Sources(train, plain, val)

    def count_classes(self) -> int:
        """Number of class folders in train/ (without reading any image)."""
        self.check()
        return sum(1 for p in (Path(self.root) / "train").iterdir() if p.is_dir())
