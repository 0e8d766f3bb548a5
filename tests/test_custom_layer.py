"""A user registers a layer type the pruner does not know (docs/custom_layers.md): a gated linear unit whose
output channel owns two weight rows. Without a rule metaprune refuses it by name; with a torch-pruning custom
pruner it prunes exactly (same function as zeroing the removed units) and the pruned model round-trips
through save/load."""
import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp

from metaprune.io import load_model, save_model
from metaprune.models import available, build, register


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

PRUNERS = {GatedLinear: GatedLinearPruner()}


def test_unregistered_custom_layer_is_refused_by_name():
    from metaprune.prune import UnprunableOpError, prune

    model = build("test_glu_net")
    with pytest.raises(UnprunableOpError, match=r"glu \(GatedLinear\)"):
        prune(model, torch.randn(2, 16), target_speedup=2.0)


def test_registered_custom_layer_prunes_exactly_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build("test_glu_net").eval()
    x = torch.randn(8, 16)
    drop = [0, 3, 5, 9, 30]
    pruned = copy.deepcopy(model)
    DG = tp.DependencyGraph().build_dependency(pruned, x, customized_pruners=PRUNERS)
    DG.get_pruning_group(pruned.glu, PRUNERS[GatedLinear].prune_out_channels, idxs=drop).prune()
    assert pruned.glu.weight.shape == (2 * 27, 16) and pruned.fc.weight.shape == (4, 27)
    with torch.no_grad():
        rows = torch.tensor(drop + [d + 32 for d in drop])
        model.glu.weight[rows] = 0  # a zeroed unit outputs 0 * sigmoid(0) = 0
        model.glu.bias[rows] = 0
        assert torch.allclose(model(x), pruned(x), atol=1e-6)
    save_model(pruned, tmp_path / "glu")
    loaded = load_model(tmp_path / "glu")
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_custom_layer_through_the_ratio_search():
    spec = importlib.util.spec_from_file_location(
        "arch_bench", Path(__file__).resolve().parents[1] / "benchmarks" / "architectures.py")
    bench = sys.modules.get("arch_bench")
    if bench is None:
        bench = importlib.util.module_from_spec(spec)
        sys.modules["arch_bench"] = bench
        spec.loader.exec_module(bench)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), GatedLinear(64, 64), nn.Linear(64, 4)).eval()
    x = torch.randn(4, 16)
    # the criterion reads the custom layer's entries through param_slices: the weakest units go first
    with torch.no_grad():
        model[2].weight[[7, 7 + 64]] *= 1e-3
        model[3].weight[:, 7] *= 1e-3
    res = bench.tp_prune(model, x, 2.0, ignored_layers=["3"], pruners={**PRUNERS}, steps=6)
    assert 1.8 <= res["speedup"] <= 2.4
    assert model[2].out_features < 64 and model(x).shape == (4, 4)
    assert model[2].weight[:model[2].out_features].norm(dim=1).min() > 0.05  # unit 7 is gone
