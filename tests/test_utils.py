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
