"""Tiny datasets written in the real on-disk formats, so the torchvision code paths run without network."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_cifar_fixture(root, n_train: int = 50, n_test: int = 20, variant: str = "cifar10", seed: int = 0) -> Path:
    """Write a CIFAR-format dataset (python pickled batches, as the official archive) under ``root``.

    Images are class-dependent colour blobs plus noise, so a model can learn them. Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    if variant == "cifar10":
        folder, ncls, label_key = root / "cifar-10-batches-py", 10, "labels"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, meta = ["test_batch"], ("batches.meta", "label_names")
    elif variant == "cifar100":
        folder, ncls, label_key = root / "cifar-100-python", 100, "fine_labels"
        train_files, test_files, meta = ["train"], ["test"], ("meta", "fine_label_names")
    else:
        raise ValueError(f"variant must be cifar10 or cifar100, got {variant!r}")
    folder.mkdir(parents=True, exist_ok=True)

    def batch(n):
        labels = rng.integers(0, ncls, n)
        base = (np.stack([labels * 37 % 256, labels * 91 % 256, labels * 53 % 256], 1)[:, :, None, None])
        img = np.clip(base + rng.normal(0, 30, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
        return {"data": img.reshape(n, -1), label_key: labels.tolist()}

    per_file = -(-n_train // len(train_files))
    for f in train_files:
        with open(folder / f, "wb") as fh:
            pickle.dump(batch(per_file), fh)
    for f in test_files:
        with open(folder / f, "wb") as fh:
            pickle.dump(batch(n_test), fh)
    with open(folder / meta[0], "wb") as fh:
        pickle.dump({meta[1]: [f"class_{i}" for i in range(ncls)]}, fh)
    return root


def write_idx_fixture(root, n_train: int = 200, n_test: int = 50, gz: bool = True, seed: int = 0,
                      size: int = 28) -> Path:
    """Write the four Fashion-MNIST IDX files (big-endian header, uint8 data; gzipped like the official ones).

    Images are class-dependent stripes plus noise, so a model can learn them. Returns ``root``.
    """
    import gzip

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def write(name, arr):
        header = (0x0800 + arr.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        payload = header + arr.astype(np.uint8).tobytes()
        path = root / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(payload) if gz else payload)

    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        rows = np.arange(size)[None, :, None]
        img = np.where((rows // 3) % 10 == labels[:, None, None], 200, 20) + rng.normal(0, 20, (n, size, size))
        write(f"{split}-images-idx3-ubyte", np.clip(img, 0, 255))
        write(f"{split}-labels-idx1-ubyte", labels)
    return root
