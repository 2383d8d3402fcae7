"""Data modules: digits (embedded default), Fashion-MNIST, CIFAR-10, ImageNet folders, synthetic."""
from .base import ImageDataModule, SeededRandomSampler
from .cifar10 import CIFAR10DataModule
from .digits import DigitsDataModule
from .fashion_mnist import FashionMNISTDataModule
from .imagenet import ImageNetDataModule
from .synthetic import SyntheticDataModule

DATAMODULES = {
    "digits": DigitsDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "imagenet": ImageNetDataModule,
    "synthetic": SyntheticDataModule,
}

__all__ = ["CIFAR10DataModule", "DATAMODULES", "DigitsDataModule", "FashionMNISTDataModule",
           "ImageDataModule", "ImageNetDataModule", "SeededRandomSampler", "SyntheticDataModule"]
