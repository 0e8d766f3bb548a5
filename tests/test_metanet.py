"""Metanetwork: identity at init, equivariance to node permutations, masked slots, typed encoders, checkpoints."""
import time

import pytest
import torch
from torch_geometric.data import Data

from metaprune.metanet import Metanet, load_metanet, save_metanet

NODE_VOCAB = ["input", "conv", "linear", "add"]
EDGE_VOCAB = ["linear", "conv3x3", "residual", "conv1x1"]
WIDTH = {"linear": 1, "conv3x3": 9, "residual": 1, "conv1x1": 1}


class StandInGraph(Data):
    """The NetGraph contract, for tests only: edges sorted by type; flat edge_attr in the same block order."""

    def edge_type_ids(self):
        return torch.unique(self.edge_type).tolist()

    def _width(self, t):
        return WIDTH[EDGE_VOCAB[t]]

    def edge_slice(self, t):  # positions into edge_index
        start = int((self.edge_type < t).sum())
        return slice(start, start + int((self.edge_type == t).sum()))

    def edge_features(self, t):
        start = sum(int((self.edge_type == u).sum()) * self._width(u) for u in self.edge_type_ids() if u < t)
        n = int((self.edge_type == t).sum()) * self._width(t)
        return self.edge_attr[start:start + n].view(-1, self._width(t))

    def with_features(self, x=None, edge_attr=None):
        g = self.clone()
        g.x = self.x if x is None else x
        g.edge_attr = self.edge_attr if edge_attr is None else edge_attr
        return g


def make_graph(widths=(3, 8, 8, 5), f_node=6, seed=0):
    """input -conv3x3-> conv -conv3x3-> conv (+ residual add) -linear-> linear: a tiny ResNet-like graph."""
    g = torch.Generator().manual_seed(seed)
    sizes, types = list(widths), ["input", "conv", "conv", "linear"]
    offsets = torch.tensor([0] + sizes).cumsum(0).tolist()
    node_type = torch.cat([torch.full((s,), NODE_VOCAB.index(t)) for s, t in zip(sizes, types)])
    edges = {}
    for layer, etype in ((0, "conv3x3"), (1, "conv3x3"), (2, "linear")):
        a = torch.arange(offsets[layer], offsets[layer + 1])
        b = torch.arange(offsets[layer + 1], offsets[layer + 2])
        edges.setdefault(etype, []).append(torch.cartesian_prod(a, b).T)
    edges["residual"] = [torch.stack([torch.arange(offsets[1], offsets[2]), torch.arange(offsets[2], offsets[3])])]
    ei, et, attr = [], [], []
    for name in sorted(edges, key=EDGE_VOCAB.index):
        e = torch.cat(edges[name], 1)
        ei.append(e)
        et.append(torch.full((e.shape[1],), EDGE_VOCAB.index(name)))
        attr.append(torch.randn(e.shape[1] * WIDTH[name], generator=g) * 0.1)
    n = sum(sizes)
    x_mask = torch.zeros(n, f_node, dtype=torch.bool)
    x_mask[:, :2] = True
    x_mask[node_type == NODE_VOCAB.index("conv"), :5] = True
    x = torch.randn(n, f_node, generator=g) * x_mask
    return StandInGraph(x=x, x_mask=x_mask, node_type=node_type, edge_index=torch.cat(ei, 1),
                        edge_type=torch.cat(et), edge_attr=torch.cat(attr), node_type_names=NODE_VOCAB,
                        edge_type_names=EDGE_VOCAB, constant_edge_types=["residual"], num_nodes=n)


def metanet(g, **cfg):
    return Metanet.for_graphs([g], frozen_features=(), **cfg)


def randomise_decoders(net):
    torch.manual_seed(1)
    for dec in list(net.node_dec.values()) + list(net.edge_dec.values()):
        torch.nn.init.normal_(dec.weight, std=1.0)
        torch.nn.init.normal_(dec.bias, std=1.0)
    return net


def test_untrained_metanet_is_identity():
    g = make_graph()
    net = metanet(g, hidden=16, layers=2)
    x, attr = net(g)
    assert torch.equal(x, g.x) and torch.equal(attr, g.edge_attr)
    assert set(net.edge_enc) == {"conv3x3", "linear", "residual"}
    assert set(net.node_enc) == {"input", "conv", "linear"}


def test_equivariant_to_node_permutations():
    g = make_graph()
    net = randomise_decoders(metanet(g, hidden=16, layers=3, aggr="mean")).eval()
    x, attr = net(g)
    assert not torch.allclose(attr, g.edge_attr)  # the test would be vacuous on an identity map
    perm = torch.randperm(g.num_nodes, generator=torch.Generator().manual_seed(3))
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    gp = g.with_features()
    gp.x, gp.x_mask, gp.node_type, gp.edge_index = g.x[perm], g.x_mask[perm], g.node_type[perm], inv[g.edge_index]
    xp, attrp = net(gp)
    torch.testing.assert_close(xp, x[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attrp, attr, atol=1e-5, rtol=1e-5)


def test_equivariant_to_edge_order_within_a_type():
    g = make_graph()
    net = randomise_decoders(metanet(g, hidden=16, layers=2)).eval()
    _, attr = net(g)
    t = EDGE_VOCAB.index("conv3x3")
    pos = g.edge_slice(t)
    ids = torch.arange(pos.start, pos.stop)
    local = torch.randperm(len(ids), generator=torch.Generator().manual_seed(0))
    gp = g.with_features()
    gp.edge_index = g.edge_index.clone()
    gp.edge_index[:, ids] = g.edge_index[:, ids[local]]
    gp.edge_attr = g.edge_attr.clone()
    gp.edge_features(t)[:] = g.edge_features(t)[local]
    _, attrp = net(gp)
    new, newp = g.with_features(edge_attr=attr).edge_features(t), gp.with_features(edge_attr=attrp).edge_features(t)
    torch.testing.assert_close(newp, new[local], atol=1e-5, rtol=1e-5)


def test_constant_edges_and_frozen_slots_never_change():
    g = make_graph()
    net = randomise_decoders(Metanet.for_graphs([g], hidden=8, layers=1, frozen_features=("running_var",),
                                                node_features=["bias", "norm_weight", "norm_bias", "running_mean",
                                                               "running_var", "pad"]))
    assert "residual" not in net.edge_dec
    x, attr = net(g)
    res = EDGE_VOCAB.index("residual")
    assert torch.equal(g.with_features(edge_attr=attr).edge_features(res), g.edge_features(res))
    assert torch.equal(x[:, 4], g.x[:, 4]) and not torch.equal(x[:, 3], g.x[:, 3])


def test_padding_slots_never_change_and_scale_bounds_the_change():
    g = make_graph()
    net = randomise_decoders(metanet(g, hidden=8, layers=1, scale=0.01))
    x, attr = net(g)
    assert torch.equal(x[~g.x_mask], g.x[~g.x_mask])
    assert not torch.equal(x[g.x_mask], g.x[g.x_mask])
    rel = (attr - g.edge_attr).norm() / g.edge_attr.norm()
    assert 0 < rel < 0.5


def test_gradients_reach_every_used_encoder_and_layer():
    g = make_graph()
    net = metanet(g, hidden=8, layers=2)
    x, attr = net(g)
    (attr.pow(2).sum() + x.pow(2).sum()).backward()
    # decoders are zero at init, so only they get gradient on the first step; after one step the rest do
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.edge_dec.parameters())
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    net.zero_grad()
    x, attr = net(g)
    (attr.pow(2).sum() + x.pow(2).sum()).backward()
    assert net.convs[0].edge_self.weight.grad.abs().sum() > 0
    assert net.edge_enc["conv3x3"][0].weight.grad.abs().sum() > 0


def test_unseen_edge_type_falls_back_by_width_or_refuses():
    g = make_graph()
    net = metanet(g, hidden=8, layers=1)
    g2 = g.with_features()
    g2.edge_type = g.edge_type.clone()
    g2.edge_type[g.edge_type == EDGE_VOCAB.index("residual")] = EDGE_VOCAB.index("conv1x1")
    with pytest.warns(UserWarning, match="conv1x1"):
        net(g2)
    strict = metanet(g, hidden=8, layers=1, unseen="error")
    with pytest.raises(ValueError, match="conv1x1"):
        strict(g2)


def test_rejects_bad_config():
    with pytest.raises(ValueError, match="aggr"):
        Metanet(["conv"], {"linear": 1}, 4, aggr="median")


def test_checkpoint_round_trip(tmp_path):
    g = make_graph()
    net = randomise_decoders(metanet(g, hidden=8, layers=2, scale=0.02))
    save_metanet(net, tmp_path / "m", extra={"step": 3}, split={"train": ["a"]})
    back = load_metanet(tmp_path / "m")
    assert back.config == net.config
    torch.testing.assert_close(back(g)[1], net(g)[1])
    assert (tmp_path / "m" / "zoo_split.json").exists()


def test_resnet20_sized_graph_is_fast_on_cpu():
    # ResNet-20 width 16: 19 conv layers of 16/32/64 channels, ~30k 3x3 (input, output) channel pairs
    sizes = [3] + [16] * 7 + [32] * 6 + [64] * 6 + [10]
    offs = torch.tensor([0] + sizes).cumsum(0).tolist()
    ei = torch.cat([torch.cartesian_prod(torch.arange(offs[i], offs[i + 1]), torch.arange(offs[i + 1], offs[i + 2])).T
                    for i in range(len(sizes) - 1)], 1)
    n = offs[-1]
    g = StandInGraph(x=torch.randn(n, 8), x_mask=torch.ones(n, 8, dtype=torch.bool), node_type=torch.full((n,), 1),
                     edge_index=ei, edge_type=torch.full((ei.shape[1],), 1), edge_attr=torch.randn(ei.shape[1] * 9) * 0.1,
                     node_type_names=NODE_VOCAB, edge_type_names=EDGE_VOCAB, constant_edge_types=["residual"], num_nodes=n)
    net = metanet(g, hidden=32, layers=4)
    t0 = time.perf_counter()
    x, attr = net(g)
    attr.sum().backward()
    elapsed = time.perf_counter() - t0
    assert ei.shape[1] > 25_000 and attr.shape == g.edge_attr.shape
    assert elapsed < 10.0, f"forward+backward took {elapsed:.1f}s"


@pytest.mark.parametrize("aggr", ["mean", "sum", "max", ["mean", "max", "min", "std"]])
def test_chunked_inference_equals_the_differentiable_pass(aggr, monkeypatch):
    """Without autograd, big graphs run a few edges at a time (ViT-B/16 has 86M): same output."""
    import metaprune.metanet.model as M
    from metaprune.graph import to_graph
    from metaprune.models import build

    model = build("resnet", depth=8, width=8, num_classes=10, in_channels=1)
    g = to_graph(model, torch.randn(2, 1, 8, 8))
    torch.manual_seed(0)
    net = Metanet.for_graphs([g], hidden=8, layers=2, aggr=aggr, scale=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))  # off the identity
    full_x, full_e = net(g)  # grad enabled: the differentiable pass
    monkeypatch.setattr(M, "CHUNK_EDGES", 300)
    assert g.edge_index.shape[1] > 5 * 300
    with torch.no_grad():
        x, e = net(g)
    assert not torch.equal(full_e, g.edge_attr)
    assert torch.allclose(x, full_x, atol=1e-5, rtol=1e-4) and torch.allclose(e, full_e, atol=1e-5, rtol=1e-4)


def test_pna_style_aggregators_see_what_the_mean_hides():
    """Two neurons whose incoming weights have the same mean but different spread: a mean-only metanetwork
    cannot tell them apart, one with ["mean", "std"] can (the PNA argument); bad names are refused by name."""
    from metaprune.metanet.conv import EdgeNodeConv

    torch.manual_seed(0)
    ei = torch.tensor([[0, 1, 0, 1], [2, 2, 3, 3]])
    e = torch.zeros(4, 4)
    e[0], e[1] = 1.0, -1.0            # node 2 receives +1 and -1: mean 0, spread 1
    outs = {}                         # node 3 receives 0 and 0: mean 0, no spread
    for aggr in ("mean", ("mean", "std")):
        conv = EdgeNodeConv(4, list(aggr) if isinstance(aggr, tuple) else aggr)
        outs[aggr] = conv.propagate(ei, x=torch.zeros(4, 4), e=e, size=(4, 4))
    assert outs["mean"].shape[1] == 4 and outs["mean", "std"].shape[1] == 8
    std = outs["mean", "std"][:, 4:]
    assert std[2].abs().sum() > 0 and std[3].abs().sum() == 0  # the spread of node 2's messages is visible
    with pytest.raises(ValueError, match="metanet.aggr"):
        EdgeNodeConv(4, ["mean", "median"])
