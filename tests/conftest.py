import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def digits():
    from metaprune.data import get_data

    return get_data("digits")


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory):
    from metaprune.data import write_cifar_fixture

    return write_cifar_fixture(tmp_path_factory.mktemp("cifar"), n_train=60, n_test=20)
