"""Fashion-MNIST (Zalando, 70,000 real 28x28 grey images of 10 clothing classes), held in memory.

Splits: ``val_size`` images (seeded, stratified) are held out of the official 60,000 training images as
**val**; the official 10,000 test images are **test**. Normalised with the mean and std of the train part.
``train_subset`` caps the train part (seeded, stratified) so CPU runs can trade data for time; the cap is in
``info`` and therefore in every result that records its data config.

Where the IDX files are looked for, in order: ``root``; ``$DATA_ROOT/fashion_mnist``; Debian's package
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); with ``download=True``, torchvision fetches
them (checksummed) into ``root`` or ``$DATA_ROOT/fashion_mnist`` or ``data/fashion_mnist``. Each file may be
plain or gzipped; torchvision's MNIST-format readers parse them.
"""
from __future__ import annotations

import gzip
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .core import DataBundle, DataNotFoundError, TensorPairs, check_labels, check_root, register_data

DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
         "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
HOW_TO_GET = ("run `make data` (installs Debian's dataset-fashion-mnist when root), pass data.download=true, or "
              "point data.root at a folder holding the four IDX files")
NATIVE = 28


def _candidates(root) -> list[Path]:
    out = []
    if root not in (None, ""):
        out.append(check_root("fashion_mnist", root, HOW_TO_GET))
    if os.environ.get("DATA_ROOT"):
        out.append(Path(os.environ["DATA_ROOT"]) / "fashion_mnist")
    out.append(DEBIAN_ROOT)
    return out


def _find(folder: Path, stem: str) -> Path | None:
    for sub in (folder, folder / "raw", folder / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (sub / name).is_file():
                return sub / name
    return None


def _locate(root, download: bool) -> dict[str, Path]:
    """The four files from the first folder holding all of them (downloading first when asked)."""
    tried = _candidates(root)
    for folder in tried:
        found = {k: _find(folder, stem) for k, stem in FILES.items()}
        if all(found.values()):
            return found
    if download:
        import torchvision.datasets as D

        target = tried[0] if root not in (None, "") or os.environ.get("DATA_ROOT") else Path("data/fashion_mnist")
        try:
            D.FashionMNIST(str(target), train=True, download=True)
            D.FashionMNIST(str(target), train=False, download=True)
        except (RuntimeError, OSError) as e:
            raise DataNotFoundError(f"fashion_mnist: download into {target} failed ({str(e).splitlines()[0]}); "
                                    f"{HOW_TO_GET}") from None
        return _locate(target, False)
    where = ", ".join(str(p) for p in tried)
    missing = [stem for stem in FILES.values() if not any(_find(f, stem) for f in tried)]
    raise DataNotFoundError(f"fashion_mnist not found: {', '.join(missing) or 'a complete set of the four files'} "
                            f"missing (looked in {where}); {HOW_TO_GET}")


def _read_idx(path: Path, kind: str) -> torch.Tensor:
    """Parse one IDX file with torchvision's reader; any damage becomes one error naming the file."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    reader = read_image_file if kind == "images" else read_label_file
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh, tempfile.TemporaryDirectory() as tmp:
                plain = Path(tmp) / path.stem
                plain.write_bytes(fh.read())
                return reader(str(plain)).clone()
        return reader(str(path)).clone()
    except (AssertionError, RuntimeError, ValueError, TypeError, KeyError, OSError, EOFError) as e:
        why = str(e).splitlines()[0] if str(e) else "wrong magic number or header"
        raise DataNotFoundError(f"fashion_mnist: {path} is not a readable IDX {kind} file "
                                f"(truncated or corrupt: {why}); {HOW_TO_GET}") from None


def _load_pair(files: dict[str, Path], split: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _read_idx(files[f"{split}_images"], "images"), _read_idx(files[f"{split}_labels"], "labels")
    if len(x) != len(y):  # names both files, unlike the shared check below
        raise DataNotFoundError(f"fashion_mnist: {files[f'{split}_images']} holds {len(x)} images but "
                                f"{files[f'{split}_labels']} holds {len(y)} labels; {HOW_TO_GET}")
    check_labels(y, len(x), 10, "fashion_mnist", files[f"{split}_labels"], HOW_TO_GET)
    return x, y


def _stratified(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of ``n`` samples drawn with class proportions kept (seeded), sorted."""
    from sklearn.model_selection import train_test_split

    if n >= len(labels):
        return np.arange(len(labels))
    picked, _ = train_test_split(np.arange(len(labels)), train_size=n, random_state=seed, stratify=labels)
    return np.sort(picked)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` 28 keeps the images; a larger even margin pads background (as LeNet's 32x32); else bilinear."""
    if size == NATIVE:
        return x
    if size > NATIVE and (size - NATIVE) % 2 == 0:
        p = (size - NATIVE) // 2
        return torch.nn.functional.pad(x, (p, p, p, p))
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class ShiftFlip:
    """Light batch augmentation: random horizontal flip and a random shift of up to ``shift`` pixels."""

    def __init__(self, shift: int = 2, seed: int = 0):
        self.shift, self.generator = shift, torch.Generator().manual_seed(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, s = len(x), self.shift
        flip = torch.rand(n, generator=self.generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if s == 0:
            return x
        h, w = x.shape[-2:]
        padded = torch.nn.functional.pad(x, (s, s, s, s), value=float(x.amin()))
        dy, dx = torch.randint(0, 2 * s + 1, (2, n), generator=self.generator)
        rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None].expand(n, x.shape[1], h, w + 2 * s)
        x = padded.gather(2, rows)
        cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :].expand(n, x.shape[1], h, w)
        return x.gather(3, cols)


def fashion_mnist(root=None, download: bool = False, seed: int = 0, val_size: int = 5000, size: int = NATIVE,
                  train_subset: int | None = None, augment: bool = False, **_) -> DataBundle:
    """Build the Fashion-MNIST bundle (see the module docstring for splits, roots and options)."""
    if int(val_size) < 10 or int(size) < 8:
        raise ValueError(f"fashion_mnist: data.val_size={val_size} must be >= 10 and data.size={size} >= 8")
    if train_subset is not None and int(train_subset) < 10:
        raise ValueError(f"fashion_mnist: data.train_subset={train_subset} must be >= 10 (or null for all)")
    files = _locate(root, bool(download))
    x_all, y_all = _load_pair(files, "train")
    x_test, y_test = _load_pair(files, "test")
    labels = y_all.numpy()
    from sklearn.model_selection import train_test_split

    if int(val_size) >= len(labels):
        raise ValueError(f"fashion_mnist: data.val_size={val_size} leaves no training images of {len(labels)}")
    train_idx, val_idx = train_test_split(np.arange(len(labels)), test_size=int(val_size), random_state=seed,
                                          stratify=labels)
    train_idx = np.sort(train_idx)
    if train_subset is not None:
        train_idx = train_idx[_stratified(labels[train_idx], int(train_subset), seed)]
    x_train = x_all[torch.as_tensor(train_idx)].float().div_(255)
    mean, std = float(x_train.mean()), float(x_train.std())  # statistics of the native-size train images

    def prep(x: torch.Tensor) -> torch.Tensor:  # resized before normalising, so padding is background
        x = x.float().div_(255) if x.dtype == torch.uint8 else x
        return _resize(x.unsqueeze(1), int(size)).sub_(mean).div_(std)

    train = TensorPairs(prep(x_train), y_all[torch.as_tensor(train_idx)])
    if augment:
        train.transform = ShiftFlip(2, seed)
    val = TensorPairs(prep(x_all[torch.as_tensor(np.sort(val_idx))]), y_all[torch.as_tensor(np.sort(val_idx))])
    test = TensorPairs(prep(x_test), y_test)
    info = {"source": str(files["train_images"].parent), "n_train": len(train), "n_val": len(val),
            "n_test": len(test), "train_subset": train_subset, "augment": bool(augment), "mean": mean, "std": std}
    return DataBundle("fashion_mnist", train, val, test, 10, (1, int(size), int(size)), info)


register_data("fashion_mnist", fashion_mnist)
