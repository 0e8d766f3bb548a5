"""Dataset construction and loaders (see package docstring)."""
from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset


class DataNotFoundError(FileNotFoundError):
    """A dataset root that is missing, empty or holds no readable data."""


def check_labels(labels, n_images: int, num_classes: int, dataset: str, source, hint: str = "",
                 first: int = 0) -> np.ndarray:
    """``labels`` as an int64 array if they are integers in ``first..first+num_classes-1``, one per image;
    else a ``DataNotFoundError`` naming ``source`` (the file) and what is wrong."""
    arr = np.asarray(labels.numpy() if isinstance(labels, torch.Tensor) else labels)
    tail = f"; {hint}" if hint else ""
    if arr.dtype.kind not in "iu":
        raise DataNotFoundError(f"{dataset}: {source} has labels of type {arr.dtype}, not integers{tail}")
    arr = arr.reshape(-1).astype(np.int64)
    if len(arr) != n_images:
        raise DataNotFoundError(f"{dataset}: {source} holds {n_images} images but {len(arr)} labels{tail}")
    if len(arr) and (arr.min() < first or arr.max() >= first + num_classes):
        raise DataNotFoundError(f"{dataset}: {source} has labels outside {first}..{first + num_classes - 1} "
                                f"({arr.min()}..{arr.max()}){tail}")
    return arr


@dataclass
class DataBundle:
    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    info: dict = field(default_factory=dict)

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        """Real validation inputs when they are in memory (right dtype, e.g. node ids for a graph task),
        random ones of the right shape otherwise."""
        if isinstance(self.val, TensorPairs) and len(self.val) >= batch_size:
            return self.val.x[:batch_size].clone()
        return torch.randn(batch_size, *self.input_shape)

    def loader(self, split: str, batch_size: int = 128, shuffle: bool | None = None, seed: int = 0,
               num_workers: int = 0, drop_last: bool = False, limit: int | None = None):
        """A loader over ``split`` (train/val/test); tensor datasets get a fast in-memory loader."""
        ds = getattr(self, split)
        shuffle = (split == "train") if shuffle is None else shuffle
        if limit is not None and limit < len(ds):
            g = torch.Generator().manual_seed(seed)
            ds = Subset(ds, torch.randperm(len(ds), generator=g)[:limit].tolist())
        if isinstance(ds, TensorPairs):
            return TensorLoader(ds.x, ds.y, batch_size, shuffle, seed, drop_last, ds.transform)
        if isinstance(ds, Subset) and isinstance(ds.dataset, TensorPairs):
            idx = torch.as_tensor(ds.indices)
            return TensorLoader(ds.dataset.x[idx], ds.dataset.y[idx], batch_size, shuffle, seed, drop_last,
                                ds.dataset.transform)
        g = torch.Generator().manual_seed(seed)
        return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, generator=g,
                          drop_last=drop_last, pin_memory=torch.cuda.is_available(),
                          persistent_workers=num_workers > 0)


class TensorPairs(Dataset):
    """Inputs and labels held in memory as two tensors; ``transform`` (optional) augments each loaded batch."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable | None = None):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class TensorLoader:
    """Batches sliced from in-memory tensors; reshuffled each epoch with a seeded generator."""

    def __init__(self, x, y, batch_size=128, shuffle=True, seed=0, drop_last=False, transform=None):
        self.x, self.y, self.batch_size, self.shuffle, self.drop_last = x, y, batch_size, shuffle, drop_last
        self.transform = transform
        self.generator = torch.Generator().manual_seed(seed)
        self.dataset = TensorPairs(x, y)

    def __len__(self):
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            x = self.x[idx]
            yield (self.transform(x) if self.transform is not None else x), self.y[idx]


def _digits(seed: int = 0, size: int | None = None, val_fraction: float = 0.2, test_fraction: float = 0.2,
            **_) -> DataBundle:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    idx = np.arange(len(y))
    trval, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=d.target)
    train, val = train_test_split(trval, test_size=val_fraction / (1 - test_fraction), random_state=seed,
                                  stratify=d.target[trval])
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    if size and size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    split = {k: TensorPairs(x[torch.as_tensor(v)], y[torch.as_tensor(v)]) for k, v in
             (("train", train), ("val", val), ("test", test))}
    return DataBundle("digits", split["train"], split["val"], split["test"], 10, tuple(x.shape[1:]),
                      {"source": "sklearn.datasets.load_digits", "n": len(y), "mean": float(mean), "std": float(std)})


_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


def _cifar_transforms(name: str, augment: bool, size: int):
    import torchvision.transforms as T

    mean, std = _CIFAR_STATS[name]
    base = [T.ToTensor(), T.Normalize(mean, std)]
    if size != 32:
        base.insert(0, T.Resize(size))
    train = ([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment and name != "svhn"
             else [T.RandomCrop(32, padding=4)] if augment else [])
    return T.Compose(train + base), T.Compose(base)


def _val_split(n: int, val_size: int, seed: int):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[val_size:], perm[:val_size]


_HOW_TO_GET = {
    "cifar10": "pass data.download=true to fetch it, or point data.root at the folder holding 'cifar-10-batches-py'",
    "cifar100": "pass data.download=true to fetch it, or point data.root at the folder holding 'cifar-100-python'",
    "svhn": "pass data.download=true to fetch it, or point data.root at the folder holding train_32x32.mat and test_32x32.mat",
    "imagenet": "point data.root at a folder with train/ and val/ subfolders, one subfolder of images per class",
}


def _require_root(name: str, root) -> Path:
    if root is None or str(root) == "":
        raise DataNotFoundError(f"dataset {name!r} needs data.root: {_HOW_TO_GET[name]}")
    return check_root(name, root, _HOW_TO_GET[name])


def check_root(name: str, root, hint: str) -> Path:
    """``data.root`` as a path, refused when it exists but is not a folder."""
    root_p = Path(root).expanduser()
    if root_p.exists() and not root_p.is_dir():
        raise DataNotFoundError(f"{name}: data.root={str(root)!r} is not a folder; {hint}")
    return root_p


def _torchvision_split(cls, name, root, download, **kw):
    """Construct a torchvision dataset, turning its deep 'not found' errors into one clear sentence."""
    root_p = _require_root(name, root)
    if not download and (not root_p.exists() or not any(root_p.iterdir())):
        raise DataNotFoundError(f"{name} not found: {root_p} is {'empty' if root_p.exists() else 'missing'}; "
                                f"{_HOW_TO_GET[name]}")
    try:
        return cls(root=str(root_p), download=download, **kw)
    except (RuntimeError, FileNotFoundError, OSError, KeyError, ValueError) as e:
        raise DataNotFoundError(f"{name} not found or unreadable under {root_p} ({str(e).splitlines()[0]}); "
                                f"{_HOW_TO_GET[name]}") from None


def _dataset_class(name: str, download: bool):
    """torchvision's class when downloading (checksummed), else one that accepts files already on disk."""
    import torchvision.datasets as D

    cls = {"svhn": D.SVHN}[name]
    return cls if download else _local(cls)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches (dicts, lists, numpy arrays) and refuses any other global."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("copy_reg", "_reconstructor"),
               ("copyreg", "_reconstructor"), ("builtins", "object")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused global {module}.{name}")
        return super().find_class(module, name)


class CIFARFolder(Dataset):
    """CIFAR-10/100 in the official python format, read without running code from the files."""

    LAYOUT = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
              "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels")}

    MAX_BATCH_BYTES = 1 << 30  # the official batches are 30-160 MB

    def __init__(self, root, name: str, train: bool, transform=None):
        folder, train_files, test_files, key = self.LAYOUT[name]
        base = Path(root) / folder
        data, labels = [], []
        for f in train_files if train else test_files:
            path = base / f
            if not path.is_file():  # also refuses FIFOs and devices, which are never opened
                raise DataNotFoundError(f"{name}: {path} is missing or not a regular file; {_HOW_TO_GET[name]}")
            if path.stat().st_size > self.MAX_BATCH_BYTES:
                raise DataNotFoundError(f"{name}: {path} is {path.stat().st_size:,} bytes, over the "
                                        f"{self.MAX_BATCH_BYTES:,}-byte limit for a CIFAR batch file")
            try:
                with open(path, "rb") as fh:
                    entry = _SafeUnpickler(fh, encoding="latin1").load()
                images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                raw_labels = entry[key]
            except (pickle.UnpicklingError, KeyError, ValueError, EOFError, TypeError) as e:
                raise DataNotFoundError(f"{name}: {path} is not a CIFAR batch file ({e}); {_HOW_TO_GET[name]}") from None
            data.append(images)
            labels.append(check_labels(raw_labels, len(images), 10 if name == "cifar10" else 100, name, path,
                                       _HOW_TO_GET[name]))
        self.data = np.concatenate(data).transpose(0, 2, 3, 1)  # HWC for PIL
        self.targets = np.concatenate(labels).tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform else img), self.targets[i]


def _cifar(name: str, root=None, download=False, seed=0, augment=True, val_size=5000, size=32, **_) -> DataBundle:
    root_p = _require_root(name, root)
    if download:  # torchvision fetches and checksums the archive; reading is ours
        import torchvision.datasets as D

        _torchvision_split({"cifar10": D.CIFAR10, "cifar100": D.CIFAR100}[name], name, root_p, True, train=True)
    if not root_p.exists() or not any(root_p.iterdir()):
        raise DataNotFoundError(f"{name} not found: {root_p} is {'empty' if root_p.exists() else 'missing'}; "
                                f"{_HOW_TO_GET[name]}")
    t_train, t_eval = _cifar_transforms(name, augment, size)
    train_aug = CIFARFolder(root_p, name, True, t_train)
    train_plain = CIFARFolder(root_p, name, True, t_eval)
    test = CIFARFolder(root_p, name, False, t_eval)
    val_size = min(val_size, len(train_aug) // 5)
    tr_idx, val_idx = _val_split(len(train_aug), val_size, seed)
    ncls = 10 if name == "cifar10" else 100
    return DataBundle(name, Subset(train_aug, tr_idx), Subset(train_plain, val_idx), test, ncls, (3, size, size),
                      {"root": str(root_p), "val_size": val_size})


def _svhn(root=None, download=False, seed=0, augment=True, val_size=5000, size=32, **_) -> DataBundle:
    cls = _dataset_class("svhn", download)
    t_train, t_eval = _cifar_transforms("svhn", augment, size)
    train_aug = _torchvision_split(cls, "svhn", root, download, split="train", transform=t_train)
    train_plain = _torchvision_split(cls, "svhn", root, False, split="train", transform=t_eval)
    test = _torchvision_split(cls, "svhn", root, download, split="test", transform=t_eval)
    for ds in (train_plain, test):
        _check_svhn(ds)
    val_size = min(val_size, len(train_aug) // 5)
    tr_idx, val_idx = _val_split(len(train_aug), val_size, seed)
    return DataBundle("svhn", Subset(train_aug, tr_idx), Subset(train_plain, val_idx), test, 10, (3, size, size),
                      {"root": str(root), "val_size": val_size})


def _check_svhn(ds) -> None:
    """torchvision casts SVHN's labels to int64 and maps 10 to 0 without checks: re-read the raw ``y``."""
    from scipy.io import loadmat

    path = Path(ds.root) / ds.filename
    try:
        raw = loadmat(str(path), variable_names=["y"]).get("y")
    except (OSError, ValueError, TypeError) as e:
        raise DataNotFoundError(f"svhn: {path} is not a readable .mat file ({e}); {_HOW_TO_GET['svhn']}") from None
    if raw is None:
        raise DataNotFoundError(f"svhn: {path} has no labels 'y'; {_HOW_TO_GET['svhn']}")
    if raw.dtype.kind == "f" and np.isfinite(raw).all() and (raw == np.round(raw)).all():
        raw = raw.astype(np.int64)  # MATLAB stores the official labels as doubles holding integers
    check_labels(raw, len(ds.data), 10, "svhn", path, _HOW_TO_GET["svhn"], first=1)  # 10 is the digit 0


def _imagenet(root=None, seed=0, augment=True, val_size=10000, size=224, **_) -> DataBundle:
    import torchvision.datasets as D
    import torchvision.transforms as T

    root_p = _require_root("imagenet", root)
    for sub in ("train", "val"):
        d = root_p / sub
        if not d.is_dir() or not any(d.iterdir()):
            raise DataNotFoundError(f"imagenet: {d} is {'empty' if d.is_dir() else 'missing'}; {_HOW_TO_GET['imagenet']}")
    norm = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    t_train = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm]) if augment else \
        T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), norm])
    t_eval = T.Compose([T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), norm])
    try:
        train_aug = D.ImageFolder(str(root_p / "train"), transform=t_train)
        train_plain = D.ImageFolder(str(root_p / "train"), transform=t_eval)
        test = D.ImageFolder(str(root_p / "val"), transform=t_eval)
    except (FileNotFoundError, RuntimeError) as e:
        raise DataNotFoundError(f"imagenet: no images under {root_p} ({e}); {_HOW_TO_GET['imagenet']}") from None
    # the official val set is the test set; model selection uses a held-out slice of train
    val_size = min(val_size, len(train_aug) // 10)
    tr_idx, val_idx = _val_split(len(train_aug), val_size, seed)
    return DataBundle("imagenet", Subset(train_aug, tr_idx), Subset(train_plain, val_idx), test,
                      len(train_aug.classes), (3, size, size), {"root": str(root_p), "val_size": val_size})


def _local(cls):
    """Subclass of a torchvision dataset that checks files exist instead of their download checksums."""

    class Local(cls):
        def _check_integrity(self) -> bool:
            return (Path(self.root) / self.filename).is_file()  # SVHN: the split's .mat file

    Local.__name__ = cls.__name__
    return Local


_BUILDERS: dict[str, Callable[..., DataBundle]] = {
    "digits": _digits,
    "cifar10": lambda **kw: _cifar("cifar10", **kw),
    "cifar100": lambda **kw: _cifar("cifar100", **kw),
    "svhn": _svhn,
    "imagenet": _imagenet,
}


def register_data(name: str, builder: Callable[..., DataBundle]) -> None:
    """Add a dataset builder under ``name`` (called with the ``data`` config's keys as kwargs)."""
    if name in _BUILDERS:
        raise ValueError(f"dataset {name!r} is already registered")
    _BUILDERS[name] = builder


def available() -> list[str]:
    return sorted(_BUILDERS)


def get_data(name: str = "digits", **kwargs) -> DataBundle:
    """Build dataset ``name``; kwargs: root, download, seed, augment, val_size, size."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}")
    return _BUILDERS[name](**kwargs)
