"""Data modules on generated files: IDX parsing, image folders, seeded shuffling, clear errors."""
import numpy as np
import pytest
import torch

from shiftquant.data import (DigitsDataModule, FashionMNISTDataModule, ImageNetDataModule,
                             SeededRandomSampler, SyntheticDataModule)
from shiftquant.data.base import default_val_size, stratified_split
from shiftquant.data.fashion_mnist import find_root, read_idx
from shiftquant.errors import DataError
from tests.helpers import make_fashion_mnist, make_image_folder, write_idx


def test_fashion_mnist_reads_idx_files_from_root(tmp_path):
    root = make_fashion_mnist(tmp_path / "fm", n_train=40, n_test=12)
    dm = FashionMNISTDataModule(root=str(root), batch_size=8, augment=False)
    dm.setup()
    assert dm.split_sizes == {"train": 36, "val": 4, "test": 12, "train_pool": 36}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = read_idx(root / "train-images-idx3-ubyte.gz")
    first = dm.train_set.indices[0]
    expected = (torch.from_numpy(raw[first:first + 1].astype(np.float32)) / 255 - 0.2860) / 0.3530
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
    assert dm.split_sizes == {"train": 55000, "val": 5000, "test": 10000, "train_pool": 55000}
    assert torch.bincount(dm.test_set.labels).tolist() == [1000] * 10
    # The validation split is stratified: 500 of each class, none of them a training image.
    val_labels = dm.val_set.dataset.labels[dm.val_set.indices]
    assert torch.bincount(val_labels).tolist() == [500] * 10
    assert not set(dm.val_set.indices) & set(dm.train_set.indices)


def test_missing_fashion_mnist_names_the_root(tmp_path, monkeypatch):
    import shiftquant.data.fashion_mnist as fm
    monkeypatch.setattr(fm, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="data.root"):
        FashionMNISTDataModule(root=str(tmp_path)).check()


def test_imagenet_folder_transforms_and_classes(tmp_path):
    root = make_image_folder(tmp_path)
    dm = ImageNetDataModule(root=str(root), image_size=32, batch_size=4)
    dm.setup()
    assert dm.num_classes == 3
    # The official val/ is the test set; the validation split comes out of train/.
    assert dm.split_sizes == {"train": 11, "val": 1, "test": 12, "train_pool": 11}
    x, _ = next(iter(dm.test_dataloader()))
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
    position = dm.train_set.dataset.samples.index((str(bad), 0))
    split = dm.train_set if position in dm.train_set.indices else dm.val_set  # same training images
    with pytest.raises(DataError, match=str(bad)):
        split[split.indices.index(position)]


def test_seeded_sampler_depends_on_seed_and_epoch_only():
    a, b = SeededRandomSampler(50, seed=3), SeededRandomSampler(50, seed=3)
    torch.rand(10)  # the global RNG does not matter
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b) and sorted(a) == list(range(50))


def test_digits_fixed_split_and_calibration_batches():
    dm = DigitsDataModule(batch_size=100)
    dm.setup()
    assert dm.split_sizes == {"train": 1294, "val": 144, "test": 359, "train_pool": 1294}
    batches = dm.calibration_batches(2)
    assert len(batches) == 2 and torch.equal(batches[0][0], dm.train_set[0][0])


def test_subsets_and_synthetic():
    dm = SyntheticDataModule(train_size=100, test_size=20, train_subset=30, image_size=8)
    dm.setup()
    assert len(dm.train_set) == 30 and dm.train_set[0][0].shape == (3, 8, 8)
    assert (len(dm.val_set), len(dm.test_set)) == (10, 20)
    # The validation split does not shrink with train_subset, and the run says why.
    from shiftquant.data.base import describe_splits
    assert dm.split_sizes["train_pool"] == 90
    words = describe_splits(dm.split_sizes)
    assert "30 train (a seeded subset of 90)" in words and "before train_subset" in words


def test_validation_split_is_seeded_stratified_disjoint_and_sized():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, val = stratified_split(labels, 10, seed=0)
    assert len(val) == 10 and sorted(train + val) == list(range(100))
    assert torch.bincount(labels[val]).tolist() == [5, 3, 2]  # in proportion to each class
    assert stratified_split(labels, 10, seed=0) == (train, val)
    assert stratified_split(labels, 10, seed=1)[1] != val
    assert default_val_size(1438) == 144 and default_val_size(60000) == 5000
    with pytest.raises(DataError, match="data.val_size"):
        stratified_split(labels, 100, seed=0)


@pytest.mark.parametrize("val_size,expected", [(0.25, 360), (200, 200), (None, 144)])
def test_val_size_as_fraction_count_or_default(val_size, expected):
    dm = DigitsDataModule(val_size=val_size)
    dm.setup()
    assert len(dm.val_set) == expected and len(dm.train_set) == 1438 - expected and len(dm.test_set) == 359


@pytest.mark.parametrize("bad", [0, 1.5, -3, "ten", True])
def test_bad_val_size_is_refused_naming_the_key(bad):
    with pytest.raises(DataError, match="data.val_size"):
        DigitsDataModule(val_size=bad).check()


def test_validation_images_are_not_augmented(tmp_path):
    """The validation split reads the training images through the test transform."""
    root = make_fashion_mnist(tmp_path / "fm", n_train=40, n_test=12)
    dm = FashionMNISTDataModule(root=str(root), augment=True)
    dm.setup()
    raw = read_idx(root / "train-images-idx3-ubyte.gz")
    i = dm.val_set.indices[0]
    expected = (torch.from_numpy(raw[i].astype(np.float32)) / 255 - 0.2860) / 0.3530
    for _ in range(3):  # no random crop or flip
        torch.testing.assert_close(dm.val_set[0][0][0], expected)


def test_an_explicit_root_is_obeyed_even_when_debian_has_the_files(tmp_path, monkeypatch):
    import shiftquant.data.fashion_mnist as fm
    debian = make_fashion_mnist(tmp_path / "debian")
    monkeypatch.setattr(fm, "DEBIAN_DIR", debian)
    assert find_root(None) == debian
    with pytest.raises(DataError, match="data.root='/nope' does not hold Fashion-MNIST: expected train-images"):
        FashionMNISTDataModule(root="/nope").check()
