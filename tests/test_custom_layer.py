"""A user registers a layer type the pruner does not know (docs/custom_layers.md): a gated linear unit whose
output channel owns two weight rows. Without a rule metaprune refuses it by name; registered with
``register_layer``, plain ``metaprune.prune.prune`` prunes it exactly (same function as zeroing the removed
units) to a measured MACs target, and the pruned model round-trips through save/load."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

import metaprune.cost
from metaprune.io import load_model, save_model
from metaprune.layers import register_layer
from metaprune.metrics import macs_and_params
from metaprune.models import available, build, register
from metaprune.prune import UnprunableOpError, prune


class GatedLinear(nn.Module):
    """``y = (W_a x + b_a) * sigmoid(W_b x + b_b)``; output channel ``j`` owns rows ``j`` and ``out + j``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(2 * out_features, in_features) / in_features ** 0.5)
        self.bias = nn.Parameter(torch.zeros(2 * out_features))

    def forward(self, x):
        # two products rather than one followed by chunk(): torch-pruning traces a custom layer's inner ops as
        # element-wise, and a split of the channel dim inside would be mapped onto the layer's input channels
        n = self.out_features
        a = F.linear(x, self.weight[:n], self.bias[:n])
        return a * torch.sigmoid(F.linear(x, self.weight[n:], self.bias[n:]))


class GatedLinearPruner(tp.pruner.function.BasePruningFunc):
    def param_slices(self, layer, out: bool):
        if not out:
            return [("weight", 1, [lambda t: t])]
        both = [lambda t: t, lambda t, n=layer.out_features: t + n]
        return [("weight", 0, both), ("bias", 0, both)]

    def prune_out_channels(self, layer, idxs):
        keep = torch.tensor(sorted(set(range(layer.out_features)) - set(idxs)))
        rows = torch.cat([keep, keep + layer.out_features])
        layer.weight = self._prune_parameter_and_grad(layer.weight, rows, 0)
        layer.bias = self._prune_parameter_and_grad(layer.bias, rows, 0)
        layer.out_features = len(keep)
        return layer

    def prune_in_channels(self, layer, idxs):
        keep = torch.tensor(sorted(set(range(layer.in_features)) - set(idxs)))
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        layer.in_features = len(keep)
        return layer

    def get_out_channels(self, layer):
        return layer.out_features

    def get_in_channels(self, layer):
        return layer.in_features


class GLUNet(nn.Module):
    def __init__(self, in_features=16, hidden=32, num_classes=4):
        super().__init__()
        self.glu = GatedLinear(in_features, hidden)
        self.fc = nn.Linear(hidden, num_classes)
        # a pruned checkpoint is rebuilt at full width, resized, then loaded: keep the size attributes in step
        self._register_load_state_dict_pre_hook(self._sync)

    def _sync(self, *args):
        self.glu.out_features, self.glu.in_features = self.glu.weight.shape[0] // 2, self.glu.weight.shape[1]

    def forward(self, x):
        return self.fc(self.glu(x))


if "test_glu_net" not in available():
    register("test_glu_net")(lambda in_features=16, hidden=32, num_classes=4: GLUNet(in_features, hidden, num_classes))

register_layer(GatedLinear, pruner=GatedLinearPruner())


class UnregisteredGatedLinear(GatedLinear):
    """The same layer under a type nobody registered (pruners are looked up by exact type)."""


def test_unregistered_custom_layer_is_refused_by_name():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), UnregisteredGatedLinear(32, 32), nn.Linear(32, 4))
    with pytest.raises(UnprunableOpError, match=r"2 \(UnregisteredGatedLinear\)"):
        prune(model, torch.randn(2, 16), target_speedup=2.0)
    # a pruner handed to this one call is enough
    res = prune(model, torch.randn(2, 16), target_speedup=1.5,
                customized_pruners={UnregisteredGatedLinear: GatedLinearPruner()})
    assert res.speedup == pytest.approx(1.5, rel=0.05) and model[2].out_features < 32


def test_pruner_without_param_slices_is_refused_by_name():
    class Bare(GatedLinearPruner):
        param_slices = None

    model = nn.Sequential(nn.Linear(16, 32), UnregisteredGatedLinear(32, 32), nn.Linear(32, 4))
    with pytest.raises(UnprunableOpError, match=r"1 \(UnregisteredGatedLinear\) has no param_slices"):
        prune(model, torch.randn(2, 16), target_speedup=1.5, customized_pruners={UnregisteredGatedLinear: Bare()})


def test_custom_layer_macs_count_its_parameters_once_per_sample():
    """GatedLinearPruner has no macs_terms: the layer costs its parameter count per sample, which for this
    linear-like layer is its exact multiply-accumulate count; torch-pruning's counter alone sees only fc."""
    model = build("test_glu_net")
    x = torch.randn(1, 16)
    counter, params = tp.utils.count_ops_and_params(model, x)
    assert counter == 32 * 4 + 4
    assert macs_and_params is metaprune.cost.macs_and_params  # one MACs count, wherever it is imported from
    assert macs_and_params(model, x) == (counter + 2 * 32 * 16 + 2 * 32, params)
    x5 = x.repeat(5, 1)
    extra = macs_and_params(model, x5)[0] - tp.utils.count_ops_and_params(model, x5)[0]
    assert extra == pytest.approx(2 * 32 * 16 + 2 * 32, abs=1)  # per sample (the counter's total is rounded down)


def test_registered_custom_layer_prunes_to_2x_exactly_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build("test_glu_net").eval()
    x = torch.randn(8, 16)
    zeroed = copy.deepcopy(model)
    res = prune(model, x, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.05) and res.protected == ["fc"]
    assert res.predicted_macs == pytest.approx(res.pruned_macs, rel=1e-6)
    drop = res.removed["glu"]
    kept = 32 - len(drop)
    assert model.glu.weight.shape == (2 * kept, 16) and model.fc.weight.shape == (4, kept)
    with torch.no_grad():
        rows = torch.tensor(drop + [d + 32 for d in drop])
        zeroed.glu.weight[rows] = 0  # a zeroed unit outputs 0 * sigmoid(0) = 0
        zeroed.glu.bias[rows] = 0
        torch.testing.assert_close(model(x), zeroed(x), atol=1e-6, rtol=1e-5)
    save_model(model, tmp_path / "glu")
    loaded = load_model(tmp_path / "glu")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_custom_layer_by_hand_through_torch_pruning():
    """The rule is a plain torch-pruning pruner: its dependency graph removes exactly the units asked for."""
    model = build("test_glu_net").eval()
    DG = tp.DependencyGraph().build_dependency(model, torch.randn(2, 16),
                                               customized_pruners={GatedLinear: GatedLinearPruner()})
    DG.get_pruning_group(model.glu, DG.get_pruner_of_module(model.glu).prune_out_channels, idxs=[0, 3, 5]).prune()
    assert model.glu.weight.shape == (2 * 29, 16) and model.fc.in_features == 29


def test_criterion_sees_the_custom_layer_entries():
    """Group L2 reads the custom layer's rows through param_slices: its weakest unit goes first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), GatedLinear(64, 64), nn.Linear(64, 4)).eval()
    with torch.no_grad():
        model[2].weight[[7, 7 + 64]] *= 1e-3
        model[3].weight[:, 7] *= 1e-3
    res = prune(model, torch.randn(4, 16), target_speedup=1.2)
    assert 7 in res.removed["2"] and res.speedup == pytest.approx(1.2, rel=0.05)
    assert model[2].weight[:model[2].out_features].norm(dim=1).min() > 0.05  # unit 7 is gone
