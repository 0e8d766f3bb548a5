import numpy as np
import pytest
import torch

from metaprune.data import DataNotFoundError, get_data, write_cifar_fixture


def test_digits_split_is_fixed_disjoint_and_normalised(digits):
    again = get_data("digits")
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1077, 360, 360)
    assert torch.equal(digits.train.x, again.train.x) and torch.equal(digits.test.y, again.test.y)
    rows = lambda ds: {tuple(r.tolist()) for r in ds.x.flatten(1)}
    assert not rows(digits.train) & rows(digits.test)
    assert abs(digits.train.x.mean().item()) < 1e-4 and abs(digits.train.x.std().item() - 1) < 1e-3
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert set(digits.test.y.tolist()) == set(range(10))


def test_digits_upsampled_and_other_seed():
    big = get_data("digits", size=32)
    assert big.input_shape == (1, 32, 32)
    other = get_data("digits", seed=1)
    assert not torch.equal(other.test.y, get_data("digits").test.y)


def test_tensor_loader_covers_every_sample_once(digits):
    loader = digits.loader("train", batch_size=100, seed=3)
    ys = torch.cat([y for _, y in loader])
    assert len(ys) == len(digits.train) and len(loader) == 11
    assert sorted(ys.tolist()) == sorted(digits.train.y.tolist())


@pytest.mark.parametrize("variant,ncls", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_path_on_fixture(tmp_path, variant, ncls):
    root = write_cifar_fixture(tmp_path, n_train=60, n_test=20, variant=variant)
    data = get_data(variant, root=root, val_size=10)
    assert data.num_classes == ncls and data.input_shape == (3, 32, 32)
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 20)
    x, y = next(iter(data.loader("train", batch_size=8)))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.long
    assert abs(x.mean().item()) < 3  # normalised, not raw 0..255


def test_svhn_path_on_fixture(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        savemat(tmp_path / f"{split}_32x32.mat", {"X": rng.integers(0, 255, (32, 32, 3, n), dtype=np.uint8),
                                                   "y": rng.integers(1, 11, (n, 1))})
    data = get_data("svhn", root=tmp_path, val_size=5)
    assert (len(data.train), len(data.val), len(data.test)) == (25, 5, 10)
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and 0 <= int(y) < 10


def test_imagenet_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("cat", "dog"):
            d = tmp_path / split / c
            d.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((40, 40, 3), 50 * i, np.uint8)).save(d / f"{i}.png")
    data = get_data("imagenet", root=tmp_path, size=32, val_size=2)
    assert data.num_classes == 2 and data.input_shape == (3, 32, 32)
    assert data.test[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "imagenet"])
def test_missing_root_is_one_clear_error(tmp_path, name):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as e:
        get_data(name, root=missing)
    assert str(missing) in str(e.value)
    assert ("download=true" in str(e.value)) or ("train/ and val/" in str(e.value))


def test_empty_root_is_named(tmp_path):
    with pytest.raises(DataNotFoundError, match="empty"):
        get_data("cifar10", root=tmp_path)


def test_corrupt_cifar_is_named(tmp_path):
    root = write_cifar_fixture(tmp_path)
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match=str(tmp_path)):
        get_data("cifar10", root=root)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'mnistt'"):
        get_data("mnistt")


def test_cifar_batch_that_would_run_code_is_refused(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    root = write_cifar_fixture(tmp_path)
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": [0]}, f)
    with pytest.raises(DataNotFoundError, match="not a CIFAR batch file"):
        get_data("cifar10", root=root)
    assert not (tmp_path / "pwned").exists()
