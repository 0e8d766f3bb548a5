"""stage=init: a network pruned to 2x MACs before training, then trained like the dense one, nearly matches it."""
import pytest
import torch

from metaprune.metrics import macs_and_params
from metaprune.models import build_for_data
from metaprune.prune.at_init import prune_at_init
from metaprune.train import TrainConfig, evaluate, fit, seed_everything

EPOCHS = 12


def _fresh(digits, seed=0):
    seed_everything(seed)
    return build_for_data("resnet", digits.input_shape, digits.num_classes, depth=20)


def _train_test_acc(model, digits, seed=0):
    fit(model, digits, TrainConfig(epochs=EPOCHS, seed=seed, device="cpu", progress=False))
    return evaluate(model, digits.loader("test", 512, shuffle=False), "cpu")["acc"]


@pytest.mark.parametrize("criterion", ["snip", "magnitude"])
def test_prune_at_init_reaches_target_and_keeps_init(digits, criterion):
    model = _fresh(digits)
    x = digits.example_inputs()
    batch = next(iter(digits.loader("train", 128, seed=0)))
    base, _ = macs_and_params(model, x)
    report = prune_at_init(model, x, 2.0, criterion=criterion, batch=batch)
    macs, _ = macs_and_params(model, x)
    assert base / macs >= 2.0 and report["speedup"] >= 2.0
    # BatchNorm statistics are still those of the initialisation (SNIP's forward pass left no trace)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(torch.all(m.running_mean == 0) and torch.all(m.running_var == 1) for m in bns)
    assert all(p.grad is None for p in model.parameters())


def test_snip_needs_a_batch(digits):
    with pytest.raises(ValueError, match="batch"):
        prune_at_init(_fresh(digits), digits.example_inputs(), 2.0, criterion="snip")
    with pytest.raises(ValueError, match="criterion"):
        prune_at_init(_fresh(digits), digits.example_inputs(), 2.0, criterion="grasp")


@pytest.mark.slow
def test_pruned_at_init_trains_close_to_dense(digits):
    """Same epochs, same seed: the 2x-pruned-at-init ResNet-20 ends within a few points of the dense one."""
    dense = _train_test_acc(_fresh(digits), digits)
    model = _fresh(digits)
    batch = next(iter(digits.loader("train", 128, seed=0)))
    prune_at_init(model, digits.example_inputs(), 2.0, criterion="snip", batch=batch)
    pruned = _train_test_acc(model, digits)
    print(f"dense {dense:.4f}  snip-2x-at-init {pruned:.4f}")
    assert pruned >= dense - 0.04
