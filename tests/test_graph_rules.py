"""NetGraph rules for layers with their own pruners (issue 9): LSTM gates, GAT attention heads, and the
other families (EdgeConv, concatenations, grouped convs) with the guarantees of the CNN/ViT matrix:
exact round trip, symmetry, groups = DepGraph groups, and a metanetwork that reads the graphs."""
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from test_graph import _one_thread  # noqa: F401  (autouse fixture: one intra-op thread)
from test_graph import _assert_same_up_to, _check_group, _check_round_trip, _layout, _permuted_graph
from test_graph import _x as _seq

from metaprune.graph import GraphConversionError, from_graph, graph_params, to_graph
from metaprune.layers import register_layer
from metaprune.metanet import Metanet
from metaprune.models import build

GEN = torch.Generator().manual_seed(3)


FAMILIES = {
    "lstm-1layer": lambda: (build("lstm", hidden_size=6, head=5), _seq(2, 8, 8)),
    "lstm-2layer": lambda: (build("lstm", hidden_size=6, num_layers=2, head=5), _seq(2, 8, 8)),
    "gat": lambda: (build("gat", hidden=3, heads=2), torch.arange(5)),
    "gat-2-out-heads": lambda: (build("gat", hidden=3, heads=2, out_heads=2), torch.arange(5)),
    "dgcnn": lambda: (build("dgcnn", widths=(8, 8, 16), emb=16, head=8, k=4), _seq(2, 3, 24)),
    "densenet": lambda: (build("densenet", blocks=(2, 2), growth=4, in_channels=1), _seq(2, 1, 8, 8)),
    "resnext": lambda: (build("resnext", depth=11, cardinality=4, base_width=2, width=8, in_channels=1),
                        _seq(2, 1, 8, 8)),
}


def _nonzero_biases(model):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias") or "bias_" in n:
                p.copy_(torch.randn(p.shape, generator=GEN))
    return model


@pytest.mark.parametrize("name", list(FAMILIES))
def test_round_trip_is_exact(name):
    model, x = FAMILIES[name]()
    data = ("node_features", "edge_index") if name.startswith("gat") else ()  # the GAT's fixed input graph
    g = _check_round_trip(_nonzero_biases(model), x, unique_ids=True, data_buffers=data)
    assert g.groups, "every family has prunable groups"


def test_lstm_graph_structure():
    model, x = FAMILIES["lstm-2layer"]()
    g = to_graph(model, x, groups=True)
    H, L = 6, 2
    lstm = next(grp for grp in g.groups if grp.root == "lstm")
    # hidden unit j: 4 gates + 4 recurrent pre-activations + the unit itself, in each of the two layers
    assert lstm.nodes.shape == (H, 9 * L) and (lstm.nodes >= 0).all()
    assert "fc" not in [grp.root for grp in g.groups]
    ih = _layout(g, "lstm.weight_ih_l1")
    assert ih.shape == (4 * H, H) and ih.out_nodes.numel() == 4 * H


def test_groups_match_torch_pruning_lstm():
    for name in ("lstm-1layer", "lstm-2layer"):
        model, x = FAMILIES[name]()
        model = _nonzero_biases(model).eval()
        g = to_graph(model, x, groups=True)
        for grp in g.groups:
            _check_group(model, x, g, grp, [0, len(grp) - 1])


def test_groups_match_torch_pruning_gat():
    for name in ("gat", "gat-2-out-heads"):
        model, x = FAMILIES[name]()
        model = _nonzero_biases(model).eval()
        g = to_graph(model, x, groups=True)
        roots = {grp.root: grp for grp in g.groups}
        assert list(roots) == ["conv1"]  # conv2 is the classifier
        # a unit is one head dimension, removed from every head at once: unit 1 is channels 1 and C + 1 = 4
        assert roots["conv1"].nodes.shape == (3, 2)
        _check_group(model, x, g, roots["conv1"], [1])


def test_permuting_lstm_hidden_units_permutes_nodes():
    model, x = FAMILIES["lstm-1layer"]()
    model = _nonzero_biases(model).eval()
    g1 = to_graph(model, x, groups=True)
    H = 6
    perm = torch.randperm(H, generator=GEN)
    rows = (torch.arange(4)[:, None] * H + perm[None, :]).flatten()
    spec = {"lstm.weight_ih_l0": [(0, rows)], "lstm.weight_hh_l0": [(0, rows), (1, perm)],
            "lstm.bias_ih_l0": [(0, rows)], "lstm.bias_hh_l0": [(0, rows)], "fc1.weight": [(1, perm)]}
    g2 = _permuted_graph(model, x, spec)
    sigma = torch.arange(g1.num_nodes)
    for name in ("lstm.weight_ih_l0", "lstm.weight_hh_l0"):
        nodes = _layout(g1, name).out_nodes
        sigma[nodes] = nodes[rows]
    hidden = next(grp for grp in g1.groups if grp.root == "lstm").nodes[:, 8]
    sigma[hidden] = hidden[perm]
    _assert_same_up_to(g1, g2, sigma)
    with pytest.raises(AssertionError):
        _assert_same_up_to(g1, g2, torch.arange(g1.num_nodes))


def test_metanet_reads_and_rewrites_lstm_and_gat():
    """A metanetwork built for these graphs is the identity at init, and its rewrite reaches every weight."""
    graphs = {}
    for name in ("lstm-2layer", "gat"):
        model, x = FAMILIES[name]()
        graphs[name] = (model.eval(), x, to_graph(model, x))
    net = Metanet.for_graphs([g for _, _, g in graphs.values()], hidden=8, layers=2)
    for param in net.parameters():  # move off the identity so gradients reach the decoders' inputs
        with torch.no_grad():
            param.add_(0.05 * torch.randn(param.shape, generator=GEN))
    for name, (model, x, g) in graphs.items():
        new = net.transform(g)
        out = torch.func.functional_call(model, graph_params(new), (x,))
        assert out.shape == model(x).shape
        out.pow(2).sum().backward()
        grads = [p.grad for p in net.edge_enc.parameters() if p.grad is not None]
        assert grads and any(gr.abs().sum() > 0 for gr in grads), name
        rebuilt = from_graph(new.with_features(x=new.x.detach(), edge_attr=new.edge_attr.detach()), model)
        with torch.no_grad():
            assert torch.allclose(rebuilt(x), out.detach(), atol=1e-5), name
        net.zero_grad()


# --- user rules ------------------------------------------------------------------------------------

class _Scale(nn.Module):
    """y = x * gain + shift: one weight per channel."""

    def __init__(self, c):
        super().__init__()
        self.gain = nn.Parameter(torch.randn(c))
        self.shift = nn.Parameter(torch.randn(c))

    def forward(self, x):
        return x * self.gain + self.shift


class _ScalePruner(tp.pruner.function.BasePruningFunc):
    def param_slices(self, layer, out: bool):  # channel c owns gain[c] and shift[c] (graph groups need it)
        return [("gain", 0, [lambda t: t]), ("shift", 0, [lambda t: t])]

    def prune_out_channels(self, layer, idxs):
        keep = torch.tensor(sorted(set(range(layer.gain.numel())) - set(idxs)))
        layer.gain = self._prune_parameter_and_grad(layer.gain, keep, 0)
        layer.shift = self._prune_parameter_and_grad(layer.shift, keep, 0)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.gain.numel()

    get_in_channels = get_out_channels


def _scale_model():
    return nn.Sequential(nn.Linear(3, 4), _Scale(4), nn.Linear(4, 2))


def test_rule_without_pruner_is_refused():
    """Without a pruner torch-pruning traces through the layer and the rule would never run."""
    class Unpruned(_Scale):
        pass

    register_layer(Unpruned, graph_rule=lambda layer, g: None)
    with pytest.raises(GraphConversionError, match=r"Unpruned.*register their pruner"):
        to_graph(nn.Sequential(nn.Linear(3, 4), Unpruned(4), nn.Linear(4, 2)), _seq(2, 3))


def test_user_rule_round_trip_and_failures():
    def rule(layer, g):
        inp = g.input_nodes(layer.gain.numel())
        out = g.nodes(inp.numel(), "product")
        g.constant(inp, out, "product")
        g.feature("gain", out, "norm_weight")
        if not forget:
            g.feature("shift", out, "norm_bias")
        return out, out

    register_layer(_Scale, pruner=_ScalePruner(), graph_rule=rule)
    forget = False
    model = _scale_model()
    g = _check_round_trip(model, _seq(2, 3), unique_ids=True)
    # one group: the Linear's outputs and the layer's nodes go together (channel c removes both)
    assert len(g.groups) == 1 and g.groups[0].nodes.shape == (4, 2)
    _check_group(model, _seq(2, 3), g, g.groups[0], [1, 2])
    forget = True
    with pytest.raises(GraphConversionError, match=r"_Scale.*shift.*'1'"):
        to_graph(model, _seq(2, 3))
    register_layer(_Scale, graph_rule=lambda layer, g: g.nodes(4, "my_neuron"))
    with pytest.raises(GraphConversionError, match="my_neuron.*NODE_TYPES"):
        to_graph(model, _seq(2, 3))


def test_graph_groups_need_what_pruning_needs():
    """Graph groups are metaprune's groups: a layer whose pruner cannot list the entries one channel owns converts,
    but asking for its groups is one clear error (pruning it would fail the same way)."""
    class _BareScalePruner(_ScalePruner):
        param_slices = None

    def rule(layer, g):
        inp = g.input_nodes(layer.gain.numel())
        out = g.nodes(inp.numel(), "product")
        g.constant(inp, out, "product")
        g.feature("gain", out, "norm_weight")
        g.feature("shift", out, "norm_bias")
        return out, out

    register_layer(_Scale, pruner=_BareScalePruner(), graph_rule=rule)
    model = _scale_model()
    assert to_graph(model, _seq(2, 3)).num_nodes > 0
    with pytest.raises(GraphConversionError, match=r"channel groups of Sequential cannot be built: .*param_slices"):
        to_graph(model, _seq(2, 3), groups=True)


def test_register_layer_checks_its_arguments():
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_layer(int, graph_rule=lambda m, g: None)
    with pytest.raises(ValueError, match="pruner, a graph_rule or both"):
        register_layer(_Scale)
    with pytest.raises(TypeError, match="prune_out_channels"):
        register_layer(_Scale, pruner=object())


def test_documented_gated_linear_rule():
    """docs/custom_layers.md section 4: the GLU example's rule converts exactly, its groups match
    torch-pruning's pruning through the registered pruner, and a metanetwork reads the graph."""
    from test_custom_layer import GatedLinear, GatedLinearPruner, GLUNet

    def gated_linear_rule(layer, g):
        inp = g.input_nodes(layer.in_features)
        n = layer.out_features
        pre = g.nodes(2 * n, "linear")
        g.weight("weight", pre, inp, "linear")
        g.feature("bias", pre, "bias")
        out = g.nodes(n, "product")
        g.constant(pre, out.repeat(2), "product")
        return out, torch.stack([out, pre[:n], pre[n:]], 1)

    register_layer(GatedLinear, pruner=GatedLinearPruner(), graph_rule=gated_linear_rule)
    model, x = GLUNet().eval(), _seq(3, 16)
    g = _check_round_trip(model, x, unique_ids=True)
    (grp,) = g.groups
    assert grp.nodes.shape == (32, 3)
    _check_group(model, x, g, grp, [0, 7, 31])
    net = Metanet.for_graphs([g], hidden=8, layers=1)
    assert torch.equal(from_graph(net.transform(g), model)(x), model(x))  # identity at init


def test_meta_training_runs_on_an_lstm_zoo(tmp_path):
    """The whole meta-training loop (zoo -> graphs -> metanetwork -> group regulariser -> pruned validation)
    on a family the converter needs a rule for."""
    from metaprune.data import get_data
    from metaprune.metatrain import meta_train
    from metaprune.zoo import build_zoo

    zoo_cfg = {"name": "lstm-tiny", "families": {"lstm": {"archs": [{"hidden_size": 8, "num_layers": 2}],
                                                         "seeds": [0, 1, 2]}},
               "split": {"seed": 0, "val": 0.34, "heldout": 0.0, "heldout_families": []}}
    data_cfg = {"name": "digits_seq", "seed": 0, "batch_size": 64, "num_workers": 0}
    optim = {"epochs": 1, "optimizer": "adamw", "lr": 5e-3, "amp": False}
    zoo = build_zoo(zoo_cfg, data_cfg, optim, root=tmp_path / "zoo", progress=False, log=None)
    cfg = {"steps": 2, "nets_per_step": 1, "batch_size": 32, "warmup_steps": 0, "val_every": 2, "lr": 3e-3}
    out = meta_train(zoo, get_data("digits_seq"), {"hidden": 8, "layers": 1}, cfg, tmp_path / "m", device="cpu",
                     progress=False)
    assert [h["step"] for h in out["history"]] == [0, 2]
    assert out["history"][0]["pruned_acc"] == out["history"][0]["pruned_acc_base"]
    assert {"lstm_ih", "lstm_hh"} <= set(out["metanet"].config["edge_types"])
    moved = [p for n, p in out["metanet"].named_parameters() if "dec" in n and p.abs().sum() > 0]
    assert moved


class _LastStep(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x):  # x [B, T, 5] -> [B, T, 4] -> the last step
        return self.fc2(self.fc1(x)[:, -1])


def test_selecting_a_step_is_not_mistaken_for_a_channel_when_sizes_collide():
    """[B, T, C] with T == C: taking the last step keeps the channels (an LSTM on 8x8 digit rows, hidden 8)."""
    model = _LastStep().eval()
    g = _check_round_trip(model, _seq(2, 4, 5), unique_ids=True)
    assert len(g.groups) == 1 and g.groups[0].nodes.shape == (4, 1)
    model = build("lstm", hidden_size=8, head=5).eval()
    _check_round_trip(model, _seq(2, 8, 8), unique_ids=True)
