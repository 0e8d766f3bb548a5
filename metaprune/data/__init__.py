"""Datasets by name: ``get_data(name, ...)`` returns a ``DataBundle`` with train / val / test splits.

``digits`` is the embedded default (scikit-learn's bundled handwritten digits, no download); ``fashion_mnist``
reads the IDX files (Debian's package, ``data.root`` or torchvision's download) into memory;
``cifar10``, ``cifar100``, ``svhn`` go through torchvision; ``imagenet`` reads an ImageFolder root.
Model selection uses ``val``; ``test`` is for final reports only.
"""
from .core import DataBundle, DataNotFoundError, TensorLoader, TensorPairs, available, get_data, register_data
from .fixtures import write_cifar_fixture, write_idx_fixture
from . import fashion_mnist, synthetic  # noqa: F401,E402  (register fashion_mnist, digits_seq, sbm, shapes3d)

__all__ = ["DataBundle", "DataNotFoundError", "TensorLoader", "TensorPairs", "get_data", "available", "register_data",
           "write_cifar_fixture", "write_idx_fixture"]
