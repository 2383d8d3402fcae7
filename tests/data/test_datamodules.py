"""Data modules on generated files: IDX parsing, image folders, seeded shuffling, clear errors."""
import numpy as np
import pytest
import torch

from shiftquant.data import (DigitsDataModule, FashionMNISTDataModule, ImageNetDataModule,
                             SeededRandomSampler, SyntheticDataModule)
from shiftquant.data.fashion_mnist import find_root, read_idx
from shiftquant.errors import DataError
from tests.helpers import make_fashion_mnist, make_image_folder, write_idx


def test_fashion_mnist_reads_idx_files_from_root(tmp_path):
    root = make_fashion_mnist(tmp_path / "fm", n_train=40, n_test=12)
    dm = FashionMNISTDataModule(root=str(root), batch_size=8, augment=False)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (40, 12)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = read_idx(root / "train-images-idx3-ubyte.gz")
    expected = (torch.from_numpy(raw[:1].astype(np.float32)) / 255 - 0.2860) / 0.3530
    torch.testing.assert_close(dm.train_set[0][0][0], expected[0])


def test_truncated_idx_file_is_refused(tmp_path):
    path = tmp_path / "bad-idx.gz"
    write_idx(path, np.zeros((3, 4, 4)))
    import gzip
    data = gzip.open(path).read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-5])
    with pytest.raises(DataError, match="header says"):
        read_idx(path)


def test_debian_fashion_mnist_when_installed():
    if find_root(None) is None:
        pytest.skip("dataset-fashion-mnist is not installed")
    dm = FashionMNISTDataModule(batch_size=256)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (60000, 10000)
    labels = dm.val_set.labels
    assert torch.bincount(labels).tolist() == [1000] * 10


def test_missing_fashion_mnist_names_the_root(tmp_path, monkeypatch):
    import shiftquant.data.fashion_mnist as fm
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="data.root"):
        FashionMNISTDataModule(root=str(tmp_path)).check()


def test_imagenet_folder_transforms_and_classes(tmp_path):
    root = make_image_folder(tmp_path)
    dm = ImageNetDataModule(root=str(root), image_size=32, batch_size=4)
    dm.setup()
    assert dm.num_classes == 3 and len(dm.train_set) == 12
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32)


def test_imagenet_class_mismatch_refused_before_training(tmp_path):
    root = make_image_folder(tmp_path, val_classes=("cat", "dog", "fox"))
    with pytest.raises(DataError, match="only in train \\['eel'\\], only in val \\['fox'\\]"):
        ImageNetDataModule(root=str(root), image_size=32).setup()


def test_corrupt_image_names_its_path(tmp_path):
    root = make_image_folder(tmp_path)
    bad = root / "train" / "cat" / "0.png"
    bad.write_bytes(b"not a png at all")
    dm = ImageNetDataModule(root=str(root), image_size=32)
    dm.setup()
    index = dm.train_set.samples.index((str(bad), 0))
    with pytest.raises(DataError, match=str(bad)):
        dm.train_set[index]


def test_seeded_sampler_depends_on_seed_and_epoch_only():
    a, b = SeededRandomSampler(50, seed=3), SeededRandomSampler(50, seed=3)
    torch.rand(10)  # the global RNG does not matter
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b) and sorted(a) == list(range(50))


def test_digits_fixed_split_and_calibration_batches():
    dm = DigitsDataModule(batch_size=100)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (1438, 359)
    batches = dm.calibration_batches(2)
    assert len(batches) == 2 and torch.equal(batches[0][0], dm.train_set[0][0])


def test_subsets_and_synthetic():
    dm = SyntheticDataModule(train_size=100, val_size=20, train_subset=30, image_size=8)
    dm.setup()
    assert len(dm.train_set) == 30 and dm.train_set[0][0].shape == (3, 8, 8)
