import pytest
import torch.nn as nn

from metaprune.utils import preserve_mode


def test_preserve_mode_restores_every_module_also_after_an_error():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(), nn.Sequential(nn.BatchNorm1d(2)))
    model.train()
    model[1].eval()  # a mixed model comes back mixed
    before = [m.training for m in model.modules()]
    with preserve_mode(model):
        model.eval()
    assert [m.training for m in model.modules()] == before
    with pytest.raises(RuntimeError), preserve_mode(model):
        model.train()
        raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == before


def test_apply_metanet_keeps_the_modes_of_the_network_and_the_metanetwork():
    """A training network with a frozen (eval) BatchNorm comes back mixed, as handed over; the metanetwork keeps
    its own mode; the rewritten copy computes what the network computes (an untrained metanetwork is the identity)."""
    import torch

    from metaprune.graph import to_graph
    from metaprune.metanet import Metanet
    from metaprune.metanet.checkpoint import apply_metanet

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 3))
    model.train()
    model[1].eval()
    x = torch.randn(2, 1, 5, 5)
    net = Metanet.for_graphs([to_graph(model, x)], hidden=8, layers=1).train()
    before = [m.training for m in model.modules()]
    out = apply_metanet(net, model, x)
    assert out is not model and [m.training for m in out.modules()] == before
    assert [m.training for m in model.modules()] == before and net.training
    assert torch.equal(out.eval()(x), model.eval()(x))
