"""Fashion-MNIST: the real loader on IDX fixtures (always) and on the Debian package's files (when installed)."""
import gzip
from pathlib import Path

import pytest
import torch

from metaprune.data import DataNotFoundError, get_data, write_idx_fixture
from metaprune.data.fashion_mnist import DEBIAN_ROOT


@pytest.fixture(scope="module")
def idx_root(tmp_path_factory):
    return write_idx_fixture(tmp_path_factory.mktemp("fmnist"), n_train=300, n_test=60)


def test_splits_are_stratified_disjoint_normalised_and_seeded(idx_root):
    d = get_data("fashion_mnist", root=idx_root, val_size=50)
    assert (len(d.train), len(d.val), len(d.test)) == (250, 50, 60)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    assert d.val.y.bincount(minlength=10).tolist() == [5] * 10  # stratified
    assert abs(d.train.x.mean().item()) < 1e-4 and abs(d.train.x.std().item() - 1) < 1e-3
    rows = lambda ds: {tuple(r.tolist()) for r in ds.x.flatten(1)}
    assert not rows(d.train) & rows(d.val)
    again = get_data("fashion_mnist", root=idx_root, val_size=50)
    assert torch.equal(d.train.x, again.train.x) and torch.equal(d.val.y, again.val.y)
    other = get_data("fashion_mnist", root=idx_root, val_size=50, seed=1)
    assert not torch.equal(other.val.y, d.val.y) or not torch.equal(other.val.x, d.val.x)


def test_subset_size32_and_augmentation(idx_root):
    d = get_data("fashion_mnist", root=idx_root, val_size=50, train_subset=100, size=32, augment=True)
    assert len(d.train) == 100 and d.train.y.bincount(minlength=10).tolist() == [10] * 10
    assert d.info["train_subset"] == 100 and d.input_shape == (1, 32, 32)
    # the 2-pixel margin is background: the value a black pixel normalises to, on val (not augmented)
    background = -d.info["mean"] / d.info["std"]
    assert torch.allclose(d.val.x[:, :, :2, :], torch.full_like(d.val.x[:, :, :2, :], background), atol=1e-5)
    plain = torch.cat([x for x, _ in d.loader("train", 100, shuffle=False)])
    aug = torch.cat([x for x, _ in d.loader("train", 100, shuffle=False)])
    assert plain.shape == d.train.x.shape and not torch.equal(plain, d.train.x)  # the batches are augmented
    assert not torch.equal(plain, aug)  # differently each epoch
    assert torch.equal(torch.cat([x for x, _ in d.loader("val", 100)]), d.val.x)  # eval splits are not


def test_a_model_learns_the_fixture(idx_root):
    from metaprune.models import build_for_data
    from metaprune.train import TrainConfig, evaluate, fit, seed_everything

    d = get_data("fashion_mnist", root=idx_root, val_size=50)
    seed_everything(0)
    model = build_for_data("vgg", d.input_shape, d.num_classes, depth=11, width=4)
    fit(model, d, TrainConfig(epochs=6, lr=0.05, batch_size=32, progress=False, device="cpu"))
    assert evaluate(model, d.loader("test"), "cpu")["acc"] > 0.5


def test_root_resolution_data_root_and_plain_files(tmp_path, monkeypatch):
    write_idx_fixture(tmp_path / "fashion_mnist" / "raw", n_train=120, n_test=20, gz=False)
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    d = get_data("fashion_mnist", val_size=20)
    assert len(d.test) == 20 and Path(d.info["source"]) == tmp_path / "fashion_mnist" / "raw"


def test_missing_truncated_and_wrong_files_are_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("DATA_ROOT", raising=False)
    monkeypatch.setattr("metaprune.data.fashion_mnist.DEBIAN_ROOT", tmp_path / "nowhere")
    root = write_idx_fixture(tmp_path / "d", n_train=60, n_test=20)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match=r"t10k-labels-idx1-ubyte missing .*make data"):
        get_data("fashion_mnist", root=root, val_size=10)

    root = write_idx_fixture(tmp_path / "t", n_train=60, n_test=20)
    f = root / "train-images-idx3-ubyte.gz"
    f.write_bytes(gzip.compress(gzip.decompress(f.read_bytes())[:5000]))
    with pytest.raises(DataNotFoundError, match=r"train-images-idx3-ubyte.gz is not a readable IDX images file"):
        get_data("fashion_mnist", root=root, val_size=10)

    root = write_idx_fixture(tmp_path / "m", n_train=60, n_test=20)
    (root / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x99\x01" + bytes(70)))
    with pytest.raises(DataNotFoundError, match="train-labels-idx1-ubyte.gz is not a readable IDX labels file"):
        get_data("fashion_mnist", root=root, val_size=10)

    root = write_idx_fixture(tmp_path / "g", n_train=60, n_test=20)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        get_data("fashion_mnist", root=root, val_size=10)

    other = write_idx_fixture(tmp_path / "n", n_train=60, n_test=30)
    (root / "t10k-images-idx3-ubyte.gz").write_bytes((other / "t10k-images-idx3-ubyte.gz").read_bytes())
    with pytest.raises(DataNotFoundError, match="holds 30 images but .* holds 20 labels"):
        get_data("fashion_mnist", root=root, val_size=10)


@pytest.mark.skipif(not (DEBIAN_ROOT / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST is not installed (make data, or apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_from_the_debian_package():
    d = get_data("fashion_mnist")
    assert (len(d.train), len(d.val), len(d.test)) == (55000, 5000, 10000)
    assert d.val.y.bincount().tolist() == [500] * 10 and d.test.y.bincount().tolist() == [1000] * 10
    assert abs(d.info["mean"] - 0.286) < 0.005 and abs(d.info["std"] - 0.353) < 0.005
