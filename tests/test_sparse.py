import torch

from metaprune import build
from metaprune.prune import groups
from metaprune.prune.sparse import sparse_learning_hook
from metaprune.train import fit


def _group_norms(model, x):
    params = dict(model.named_parameters())
    return torch.cat([g.norms(params) for g in groups(model, x)])


def test_sparse_learning_drives_weak_groups_down(digits):
    """DepGraph sparse learning: with the regulariser, group norms shrink and spread (weak groups go to zero)."""
    x = digits.example_inputs()
    runs = {}
    for reg in (0.0, 0.05):
        torch.manual_seed(0)
        model = build("resnet", depth=8, width=8, num_classes=10, in_channels=1)
        hook = sparse_learning_hook(model, x, reg=reg, alpha=4) if reg else None
        fit(model, digits, dict(epochs=2, lr=0.05, weight_decay=0.0, progress=False), after_backward=hook)
        runs[reg] = _group_norms(model, x).detach()
    plain, sparse = runs[0.0], runs[0.05]
    assert sparse.sum() < 0.8 * plain.sum()
    assert (sparse < 0.05 * plain.max()).sum() > (plain < 0.05 * plain.max()).sum()


def test_sparse_learning_runs_on_a_vit(digits):
    model = build("vit", image_size=8, patch_size=2, depth=1, dim=16, heads=2, num_classes=10, in_channels=1)
    hook = sparse_learning_hook(model, digits.example_inputs(), reg=1e-3)
    hist = fit(model, digits, dict(epochs=1, lr=0.01, progress=False), after_backward=hook)
    assert hist[-1]["train_loss"] < 2.5 and torch.isfinite(next(model.parameters())).all()
