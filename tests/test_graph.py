"""Network <-> graph converter (issue 3): exact bijection, symmetry, gradients, groups, clear failures."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

from metaprune.graph import (
    CONSTANT_EDGE_TYPES,
    EDGE_TYPES,
    F_NODE,
    NODE_TYPES,
    GraphConversionError,
    edge_feature_size,
    edge_type_id,
    edge_type_name,
    from_graph,
    graph_params,
    to_graph,
)
from metaprune.depgraph import DepGraph, build_dependency_graph
from metaprune.models import build

GEN = torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread avoids thread-pool spin on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _x(*shape):
    return torch.randn(*shape, generator=GEN)


def _randomize(model: nn.Module) -> nn.Module:
    """Non-trivial norm parameters and running statistics, so a swapped slot would show."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            if getattr(m, "weight", None) is not None:
                m.weight.data = torch.randn(m.weight.shape, generator=g)
                m.bias.data = torch.randn(m.bias.shape, generator=g)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)
        elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
            m.bias.data = torch.randn(m.bias.shape, generator=g)
    for n, p in model.named_parameters():
        if "token" in n or "pos_embed" in n or "pos_embedding" in n:
            p.data = torch.randn(p.shape, generator=g)
    return model.eval()


SMALL = {
    "resnet20": lambda: (build("resnet", depth=20, width=16, num_classes=10, in_channels=1), _x(2, 1, 8, 8)),
    "resnet56": lambda: (build("resnet", depth=56, width=16, num_classes=10, in_channels=1), _x(2, 1, 8, 8)),
    "vgg19_bn": lambda: (build("vgg", depth=19, width=16, num_classes=10, in_channels=1, input_size=8), _x(2, 1, 8, 8)),
    "mobilenet_v2": lambda: (build("mobilenet_v2", width_mult=0.5, num_classes=10, in_channels=1, last_channels=128),
                             _x(2, 1, 8, 8)),
    "vit": lambda: (build("vit", image_size=8, patch_size=2, depth=2, dim=32, heads=2, num_classes=10, in_channels=1),
                    _x(2, 1, 8, 8)),
    "tv_resnet18": lambda: (torchvision.models.resnet18(num_classes=10), _x(1, 3, 32, 32)),
    "tv_mobilenet_v2": lambda: (torchvision.models.mobilenet_v2(num_classes=10), _x(1, 3, 32, 32)),
}
MEDIUM = {  # a few seconds: default run, without the per-element id check (> 2**24 elements)
    "tv_resnet50": lambda: (torchvision.models.resnet50(), _x(1, 3, 64, 64)),
}
BIG = {  # torch-pruning's tracing of DenseNet alone takes seconds; ViT-B/16 has 86M edges
    "tv_densenet121": lambda: (torchvision.models.densenet121(), _x(1, 3, 64, 64)),
    "tv_vgg11_bn": lambda: (torchvision.models.vgg11_bn(), _x(1, 3, 64, 64)),
    "tv_vit_b_16": lambda: (torchvision.models.vit_b_16(), _x(1, 3, 224, 224)),
}


def _graph_value_elements(g) -> torch.Tensor:
    """Every parameter / per-channel buffer value the graph holds (x slots in x_mask + non-constant edges)."""
    parts = [g.x[g.x_mask]]
    for t in g.edge_type_ids():
        if edge_type_name(t) not in CONSTANT_EDGE_TYPES:
            parts.append(g.edge_features(t).reshape(-1))
    return torch.cat(parts)


def _check_round_trip(model, x, unique_ids: bool, data_buffers=()):
    """``data_buffers``: buffers that hold data, not weights (a GAT's fixed graph): kept as layout metadata."""
    model = _randomize(model)
    g = to_graph(model, x, groups=True)
    back = from_graph(g, model)
    sd, sd2 = model.state_dict(), back.state_dict()
    assert list(sd) == list(sd2)
    for k in sd:
        assert sd[k].dtype == sd2[k].dtype and torch.equal(sd[k], sd2[k]), k
    with torch.no_grad():
        assert torch.equal(model(x), back(x))
    # each parameter element is in the graph exactly once; buffers other than per-channel
    # statistics (num_batches_tracked) are layout metadata
    n_param = sum(p.numel() for p in model.parameters())
    stats = [n for n, b in model.named_buffers() if not n.endswith("num_batches_tracked") and n not in data_buffers]
    n_stats = sum(model.get_buffer(n).numel() for n in stats)
    assert g.num_parameter_elements() == n_param + n_stats
    meta = [e.name for e in g.layout if e.kind == "meta"]
    assert all(n.endswith("num_batches_tracked") or n in data_buffers for n in meta)
    if unique_ids:
        # give every element a distinct integer value: the graph must hold each exactly once
        ids = copy.deepcopy(model)
        k = 0
        with torch.no_grad():
            for t in list(ids.parameters()) + [ids.get_buffer(n) for n in stats]:
                t.copy_(torch.arange(k, k + t.numel(), dtype=torch.float32).view(t.shape))
                k += t.numel()
        assert k < 2 ** 24  # exact in float32
        vals = _graph_value_elements(to_graph(ids, x)).sort().values
        assert torch.equal(vals, torch.arange(k, dtype=torch.float32))
    return g


@pytest.mark.parametrize("name", list(SMALL))
def test_round_trip_is_exact(name):
    model, x = SMALL[name]()
    g = _check_round_trip(model, x, unique_ids=True)
    assert g.num_nodes > 0 and g.edge_index.shape[1] == g.edge_type.numel()


@pytest.mark.parametrize("name", list(MEDIUM))
def test_round_trip_is_exact_medium(name):
    model, x = MEDIUM[name]()
    _check_round_trip(model, x, unique_ids=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BIG))
def test_round_trip_is_exact_large(name):
    model, x = BIG[name]()
    _check_round_trip(model, x, unique_ids=name == "tv_densenet121")  # 8.1M elements: ids exact in float32


def test_netgraph_contract():
    model, x = SMALL["vit"]()
    g = to_graph(model, x)
    assert g.x.shape == (g.num_nodes, F_NODE) and g.x.dtype == torch.float32
    assert g.x_mask.shape == g.x.shape and g.x_mask.dtype == torch.bool
    assert g.node_type.dtype == torch.long and int(g.node_type.max()) < len(NODE_TYPES)
    assert g.edge_index.dtype == torch.long and g.edge_attr.dim() == 1
    assert bool((g.edge_type.diff() >= 0).all())  # sorted by type
    types = g.edge_type_ids()
    assert types == sorted(set(g.edge_type.tolist()))
    total = 0
    for t in types:
        sl, feats = g.edge_slice(t), g.edge_features(t)
        assert bool((g.edge_type[sl] == t).all())
        assert feats.shape == (sl.stop - sl.start, edge_feature_size(edge_type_name(t)))
        assert feats.data_ptr() == g.edge_attr[total:].data_ptr()  # a view, no copy
        total += feats.numel()
    assert total == g.edge_attr.numel()
    assert g.x[~g.x_mask].abs().sum() == 0  # padding is zero
    # qkv / patch conv / residual edges are typed
    names = {edge_type_name(t) for t in types}
    assert {"linear", "conv2x2", "residual", "parameter"} <= names
    # metanetwork output path: new features change the parameters, structure is shared
    dx = torch.zeros_like(g.x)
    qkv_bias = next(e for e in g.layout if e.name == "blocks.0.attn.qkv.bias")
    dx[qkv_bias.nodes, qkv_bias.slot] = 1.0
    g2 = g.with_features(x=g.x + dx, edge_attr=g.edge_attr * 2)
    assert g2.edge_index is g.edge_index
    p2 = graph_params(g2)
    assert torch.equal(p2["blocks.0.attn.qkv.bias"], model.blocks[0].attn.qkv.bias.detach() + 1)
    assert torch.equal(p2["head.weight"], model.head.weight.detach() * 2)
    m2 = from_graph(g2, model)
    assert torch.equal(m2.patch_embed.weight, model.patch_embed.weight * 2)


def test_edge_type_ids_are_deterministic():
    assert edge_type_id("conv3x3") == EDGE_TYPES.index("conv3x3")
    a = edge_type_id("conv9x9")
    assert a == edge_type_id("conv9x9") and a >= 1024 and a not in range(len(EDGE_TYPES))
    assert edge_type_name(a) == "conv9x9" and edge_feature_size("conv9x9") == 81
    assert edge_feature_size("linear_49") == 49 and edge_feature_size("residual") == 1


def test_vgg_classifier_reads_flattened_maps():
    """torchvision VGG's first linear reads 512 x 7 x 7: one edge per (channel, neuron) with 49 features."""
    model = torchvision.models.vgg11_bn(num_classes=10)
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 16), nn.ReLU(), nn.Linear(16, 10))
    model = _randomize(model)
    x = _x(1, 3, 32, 32)
    g = to_graph(model, x, groups=True)
    t = edge_type_id("linear_49")
    assert g.edge_features(t).shape == (512 * 16, 49)
    assert torch.equal(from_graph(g, model).classifier[0].weight, model.classifier[0].weight)
    # pruning the last conv's channels removes 49-feature edges of the classifier, as torch-pruning does
    last = next(grp for grp in g.groups if grp.root == "features.25")
    _check_group(model, x, g, last, [0, 5, 511])


class _PackedAttention(nn.Module):
    """Attention written without our registry: q, k, v packed in one projection, picked by unbind;
    fused (scaled_dot_product_attention) or by hand (scores @ values)."""

    def __init__(self, fused: bool, d=16, heads=2):
        super().__init__()
        self.fused, self.heads = fused, heads
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            o = nn.functional.scaled_dot_product_attention(q, k, v)
        else:
            o = (q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5).softmax(-1) @ v
        return self.head(self.proj(o.transpose(1, 2).reshape(b, n, c)).mean(1))


class _SplitConcat(nn.Module):
    """Channel chunk + concat (a ShuffleNet-style unit without the shuffle)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        y1, y2 = self.a(x).chunk(2, 1)
        return self.fc(self.bn(torch.cat([y1, self.b(y2)], 1)).mean((2, 3)))


def _sources(g, layer):
    """Input nodes read by the first output neuron of ``layer``."""
    dst = _layout(g, layer + ".weight").out_nodes[0]
    return g.edge_index[0, g.edge_index[1] == dst]


@pytest.mark.parametrize("fused", [True, False])
def test_attention_written_by_hand_reads_the_value_third(fused):
    model = _PackedAttention(fused).eval()
    x = _x(2, 5, 16)
    g = _check_round_trip(model, x, unique_ids=True)
    qkv = _layout(g, "qkv.weight").out_nodes
    assert torch.equal(_sources(g, "proj").sort().values, qkv[32:48])  # v rows of the packed projection


def test_channel_split_and_concat():
    model = _SplitConcat().eval()
    x = _x(2, 3, 6, 6)
    g = _check_round_trip(model, x, unique_ids=True)
    a = _layout(g, "a.weight").out_nodes
    assert torch.equal(_sources(g, "b").sort().values, a[4:])  # b reads the second chunk
    concat = torch.nonzero(g.node_type == NODE_TYPES.index("concat")).flatten()
    assert concat.numel() == 8 and torch.equal(_sources(g, "fc").sort().values, concat)


# --- symmetry ------------------------------------------------------------------------------------

def _permute_(model, spec):
    """spec: {param/buffer name: [(axis, perm)]} applied in place."""
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    with torch.no_grad():
        for name, ops in spec.items():
            t = tensors[name]
            v = t.clone()
            for axis, perm in ops:
                v = v.index_select(axis, perm)
            t.copy_(v)


def _permuted_graph(model, x, spec):
    """Permute ``model``'s hidden neurons in place (``spec`` as in ``_permute_``), check the function is
    unchanged, and return the permuted network's graph."""
    with torch.no_grad():
        y = model(x)
    _permute_(model, spec)
    with torch.no_grad():
        assert torch.allclose(model(x), y, atol=1e-5)  # function preserved
    return to_graph(model, x)


def _assert_same_up_to(g1, g2, sigma):
    """g2 equals g1 with node i of g2 playing node sigma[i] of g1."""
    assert g1.num_nodes == g2.num_nodes
    assert torch.equal(g2.x, g1.x[sigma]) and torch.equal(g2.node_type, g1.node_type[sigma])
    assert torch.equal(g2.x_mask, g1.x_mask[sigma])
    assert g1.edge_type_ids() == g2.edge_type_ids()
    N = g1.num_nodes
    for t in g1.edge_type_ids():
        e1, e2 = g1.edge_index[:, g1.edge_slice(t)], sigma[g2.edge_index[:, g2.edge_slice(t)]]
        k1, o1 = (e1[0] * N + e1[1]).sort()
        k2, o2 = (e2[0] * N + e2[1]).sort()
        assert torch.equal(k1, k2), edge_type_name(t)
        assert torch.equal(g1.edge_features(t)[o1], g2.edge_features(t)[o2]), edge_type_name(t)


def _layout(g, name):
    return next(e for e in g.layout if e.name == name)


def test_permuting_hidden_channels_permutes_nodes_resnet():
    model, x = SMALL["resnet20"]()
    model = _randomize(model)
    g1 = to_graph(model, x)
    perm = torch.randperm(16, generator=GEN)
    b = "layer1.1."
    spec = {b + "conv1.weight": [(0, perm)], b + "conv2.weight": [(1, perm)]}
    for k in ("weight", "bias", "running_mean", "running_var"):
        spec[b + "bn1." + k] = [(0, perm)]
    g2 = _permuted_graph(model, x, spec)
    sigma = torch.arange(g1.num_nodes)
    nodes = _layout(g1, b + "conv1.weight").out_nodes
    sigma[nodes] = nodes[perm]
    _assert_same_up_to(g1, g2, sigma)
    with pytest.raises(AssertionError):
        _assert_same_up_to(g1, g2, torch.arange(g1.num_nodes))  # the permutation is visible


def test_permuting_embedding_and_mlp_channels_permutes_nodes_vit():
    model, x = SMALL["vit"]()
    model = _randomize(model)
    g1 = to_graph(model, x)
    d = 32
    p = torch.randperm(d, generator=GEN)  # the residual stream (embedding dim)
    h = torch.randperm(64, generator=GEN)  # MLP hidden of block 0
    spec = {"patch_embed.weight": [(0, p)], "patch_embed.bias": [(0, p)], "cls_token": [(2, p)],
            "pos_embed": [(2, p)], "norm.weight": [(0, p)], "norm.bias": [(0, p)], "head.weight": [(1, p)]}
    for i in range(2):
        b = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            spec[b + n + ".weight"] = [(0, p)]
            spec[b + n + ".bias"] = [(0, p)]
        spec[b + "attn.qkv.weight"] = [(1, p)]
        spec[b + "attn.proj.weight"] = [(0, p)]
        spec[b + "attn.proj.bias"] = [(0, p)]
        spec[b + "mlp.0.weight"] = [(1, p)] + ([(0, h)] if i == 0 else [])
        spec[b + "mlp.2.weight"] = [(0, p)] + ([(1, h)] if i == 0 else [])
        spec[b + "mlp.2.bias"] = [(0, p)]
    spec["blocks.0.mlp.0.bias"] = [(0, h)]
    g2 = _permuted_graph(model, x, spec)
    sigma = torch.arange(g1.num_nodes)
    stream = [_layout(g1, n + ".weight").out_nodes for n in
              ("patch_embed", "blocks.0.attn.proj", "blocks.0.mlp.2", "blocks.1.attn.proj", "blocks.1.mlp.2")]
    stream += list(torch.nonzero(g1.node_type == NODE_TYPES.index("residual")).flatten().view(-1, d))
    for s in stream:
        sigma[s] = s[p]
    hid = _layout(g1, "blocks.0.mlp.0.weight").out_nodes
    sigma[hid] = hid[h]
    _assert_same_up_to(g1, g2, sigma)


# --- gradients -----------------------------------------------------------------------------------

class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(torch.tanh(self.bn(self.conv(x))).flatten(1))


def test_graph_params_are_differentiable():
    torch.manual_seed(0)
    model = _randomize(_Tiny())
    x = _x(4, 2, 4, 4)
    g = to_graph(model, x)
    ex, ea = g.x.clone().requires_grad_(True), g.edge_attr.clone().requires_grad_(True)
    g = g.with_features(x=ex, edge_attr=ea)

    def loss_of(gg):
        return torch.func.functional_call(model, graph_params(gg), (x,)).pow(2).sum()

    loss = loss_of(g)
    loss.backward()
    # the graph gradient is the model gradient, placed where each parameter lives
    model.zero_grad()
    model(x).pow(2).sum().backward()
    conv_w = _layout(g, "conv.weight")
    assert torch.allclose(ea.grad[conv_w.offset:conv_w.offset + conv_w.numel], model.conv.weight.grad.flatten(),
                          rtol=1e-4, atol=1e-6)
    bn_w = _layout(g, "bn.weight")
    assert torch.allclose(ex.grad[bn_w.nodes, bn_w.slot], model.bn.weight.grad, rtol=1e-4, atol=1e-6)
    rm = _layout(g, "bn.running_mean")
    assert ex.grad[~g.x_mask].abs().sum() == 0
    # running statistics are buffers: handed over detached (batch_norm cannot differentiate them)
    # and unchanged by a train-mode forward; the graph's values still reach from_graph
    assert ex.grad[rm.nodes, rm.slot].abs().sum() == 0
    before = g.x.detach().clone()
    model.train()
    torch.func.functional_call(model, graph_params(g), (x,))
    model.eval()
    assert torch.equal(g.x.detach(), before)
    # finite differences on a few coordinates of x and edge_attr
    eps = 1e-2
    for which, grad, i in [("x", ex.grad, (int(bn_w.nodes[1]), bn_w.slot)),
                           ("x", ex.grad, (int(_layout(g, "conv.bias").nodes[0]), 0)),
                           ("e", ea.grad, conv_w.offset + 5), ("e", ea.grad, _layout(g, "fc.weight").offset + 7)]:
        with torch.no_grad():
            base = (ex if which == "x" else ea).detach()
            plus, minus = base.clone(), base.clone()
            plus[i] += eps
            minus[i] -= eps
            kw = "x" if which == "x" else "edge_attr"
            fd = (loss_of(g.with_features(**{kw: plus})) - loss_of(g.with_features(**{kw: minus}))) / (2 * eps)
        assert abs(float(fd) - float(grad[i])) <= 2e-2 * max(1.0, abs(float(fd))), (which, i, float(fd), float(grad[i]))


# --- groups --------------------------------------------------------------------------------------

_GRAPH_FIELDS = ("x", "x_mask", "node_type", "edge_index", "edge_type", "edge_attr", "edge_block_type",
                 "edge_block_ptr", "edge_block_attr_ptr")


def prune_group(model: nn.Module, example_inputs, root: str, idxs) -> nn.Module:
    """Prune channels ``idxs`` of the DepGraph group rooted at layer ``root`` of ``model`` in place with
    torch-pruning's own pruning (the reference ``graph.groups`` is checked against)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg = build_dependency_graph(model, example_inputs)
        layer = model.get_submodule(root)
        pruner = dg.get_pruner_of_module(layer)
        dg.get_pruning_group(layer, pruner.prune_out_channels, [int(i) for i in idxs]).prune()
    return model


def _check_group(model, x, g, grp, idxs):
    """Removing the nodes of units ``idxs`` of graph group ``grp`` gives the graph of the network pruned by
    metaprune (``DepGraph.apply`` on the ``metaprune.depgraph`` group it is derived from) and, for a channel
    group, by torch-pruning's own pruning of those units' root channels."""
    dep = DepGraph(copy.deepcopy(model), x, protect_outputs=True)
    i, ref = next((i, r) for i, r in enumerate(dep.groups) if r.root == grp.root and r.kind == grp.kind)
    assert ref.units == len(grp)
    dep.apply({i: torch.as_tensor(idxs)})
    references = [dep.model]
    if ref.kind == "channel":
        references.append(prune_group(copy.deepcopy(model), x, grp.root, ref.unit_roots[idxs].flatten().tolist()))
    reduced = g.remove_nodes(grp.node_ids(idxs))
    for pruned in references:
        fresh = to_graph(pruned, x)
        for f in _GRAPH_FIELDS:
            assert torch.equal(getattr(reduced, f), getattr(fresh, f)), (grp.root, f)
        rebuilt = from_graph(reduced, pruned)
        sd, sd2 = pruned.state_dict(), rebuilt.state_dict()
        assert list(sd) == list(sd2) and all(torch.equal(sd[k], sd2[k]) for k in sd)
        with torch.no_grad():
            assert torch.equal(pruned(x), rebuilt(x))


def test_groups_match_torch_pruning_resnet20():
    model, x = SMALL["resnet20"]()
    model = _randomize(model)
    g = to_graph(model, x, groups=True)
    roots = [grp.root for grp in g.groups]
    assert "fc" not in roots and len(roots) == 12  # 3 residual stages + 9 inner convs; classifier ignored
    for grp in g.groups:
        assert (grp.nodes >= 0).all()  # every channel removes the same number of nodes
        _check_group(model, x, g, grp, [0, 3, len(grp) - 1])
    stage = next(grp for grp in g.groups if grp.root == "conv1")
    assert stage.nodes.shape == (16, 7)  # stem conv + per block of stage 1: conv2 and the residual sum


def test_groups_match_torch_pruning_mobilenet_v2():
    """Depthwise convs: pruning an expanded channel removes it from expand, depthwise and project."""
    model = _randomize(build("mobilenet_v2", width_mult=0.25, num_classes=10, in_channels=1, last_channels=32))
    x = _x(2, 1, 8, 8)
    g = to_graph(model, x, groups=True)
    roots = {grp.root: grp for grp in g.groups}
    inner = roots["features.4.conv.3"]
    assert inner.nodes.shape == (48, 2)  # expand conv output + depthwise conv output
    for root in ("features.4.conv.3", "features.6.conv.6", "features.18.0"):
        _check_group(model, x, g, roots[root], [0, len(roots[root]) - 1])


def test_groups_match_torch_pruning_vit():
    model, x = SMALL["vit"]()
    model = _randomize(model)
    g = to_graph(model, x, groups=True)
    roots = {grp.root: grp for grp in g.groups}
    assert "head" not in roots
    # the embedding dim (residual stream) and the MLP hiddens
    for root in ("blocks.1.mlp.2", "blocks.0.mlp.0", "blocks.1.mlp.0"):
        _check_group(model, x, g, roots[root], [1, 5])
    emb = roots["blocks.1.mlp.2"]
    assert emb.nodes.shape == (32, 9)  # patch conv + per block: proj, mlp.2 and two residual sums
    # qkv roots the attention's head-dimension group (metaprune.depgraph's): unit d removes row d of every head
    # in q, k and v, all qkv rows once over; removing them is pruning that head slot
    qkv = roots["blocks.0.attn.qkv"]
    rows = _layout(g, "blocks.0.attn.qkv.weight").out_nodes
    assert qkv.kind == "attention" and qkv.nodes.shape == (16, 6)  # head dim 16; 3 (q, k, v) x 2 heads
    assert torch.equal(qkv.nodes.sort(1).values, rows.view(6, 16).t())
    _check_group(model, x, g, qkv, [0, 7])


def _owners(g) -> dict:
    """Per graph node, the parameter entries ``(name, dim, index)`` it holds: its per-neuron features and the
    weight rows it is the output neuron of (edges into it from other nodes are not counted)."""
    owner = {}
    for e in g.layout:
        if e.is_buffer:
            continue
        if e.kind == "nodes":
            own, dim = e.nodes, 0
        elif e.kind == "edges" and e.out_nodes is not None:
            own, dim = e.out_nodes, e.out_axis
        else:
            continue
        for i, n in enumerate(own.tolist()):
            owner.setdefault(n, []).append((e.name, dim, i))
    return owner


@pytest.mark.parametrize("name", ["resnet20", "densenet", "vit"])
def test_graph_groups_are_the_groups_of_depgraph(name):
    """``graph.groups`` is ``metaprune.depgraph.groups`` (the output layers ignored) on the graph: the same roots,
    kinds and units in the same order, and unit c's nodes hold exactly the weight rows and per-channel
    parameters its slices list (a CNN with residuals, a channel-concatenating DenseNet, a ViT whose attentions
    are head-dimension groups)."""
    from metaprune.cost import find_output_layers
    from metaprune.depgraph import groups

    model, x = (SMALL[name]() if name in SMALL else
                (build("densenet", blocks=(2, 2), growth=4, in_channels=1), _x(2, 1, 8, 8)))
    model = _randomize(model)
    g = to_graph(model, x, groups=True)
    ref = groups(model, x, find_output_layers(model, x))
    assert [(n.root, n.kind, len(n)) for n in g.groups] == [(r.root, r.kind, r.units) for r in ref]
    assert {r.kind for r in ref} == ({"channel", "attention"} if name == "vit" else {"channel"})
    owner = _owners(g)
    owning = {(name, dim) for entries in owner.values() for name, dim, _ in entries}
    for node_group, group in zip(g.groups, ref):
        slices = [(s.param, s.dim, s.idxs.tolist()) for s in group.slices if (s.param, s.dim) in owning]
        for c in range(group.units):
            held = {t for n in node_group.node_ids([c]).tolist() for t in owner.get(n, ())}
            assert held == {(p, d, idxs[c]) for p, d, idxs in slices}, (group.root, c)
    if name == "densenet":  # the stem's channels run through both dense blocks' concatenations
        _check_group(model, x, g, next(n for n in g.groups if n.root == "stem"), [0, 5])


# --- failures ------------------------------------------------------------------------------------

class _RawMatmul(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Module()
        self.inner.mix = nn.Parameter(torch.randn(6, 4))
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x @ self.inner.mix)


def test_raw_parameter_in_unknown_op_is_refused():
    with pytest.raises(GraphConversionError, match=r"inner\.mix.*MmBackward"):
        to_graph(_RawMatmul(), _x(3, 6))


def test_unsupported_layer_is_refused_with_its_path():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.ConvTranspose2d(4, 2, 2)))
    with pytest.raises(GraphConversionError, match=r"'1\.0'.*ConvTranspose2d"):
        to_graph(model, _x(1, 1, 6, 6))


def test_shared_module_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.fc(x))

    with pytest.raises(GraphConversionError, match=r"'fc'.*2 times"):
        to_graph(Twice(), _x(2, 4))


def test_to_graph_keeps_train_mode_and_frozen_flags():
    model, x = SMALL["resnet20"]()
    model.train()
    model.conv1.weight.requires_grad_(False)
    g = to_graph(model, x)
    assert model.training and all(m.training for m in model.modules())
    assert not model.conv1.weight.requires_grad
    back = from_graph(g, model)
    assert not back.conv1.weight.requires_grad and back.fc.weight.requires_grad
