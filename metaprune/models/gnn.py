"""GAT node classifier (torch-geometric ``GATConv``, several heads) in the ``(x, y)`` form of our training loop.

Transductive setting: the model holds one fixed graph as buffers (``node_features [N, F]``, ``edge_index
[2, E]``), built from a registered graph dataset (``graph="sbm"``, ``graph_seed``). ``forward(node_ids)`` runs
both GAT layers over the whole graph and returns the logits of the requested nodes, so the data items are
``(node id, label)`` pairs and ``fit``/``evaluate`` work unchanged. The graph buffers are saved with the
weights, so a checkpoint is self-contained.

Pruning: ``GATConvPruner`` is a torch-pruning custom pruner for the whole ``GATConv``, registered with
``metaprune.layers.register_layer`` when this module is imported. An output channel of a concatenating GATConv is
``head * C + c``; channels are removed per *head dimension*: dimension ``c`` goes from every head at once (rows of
``lin.weight``, entries of ``att_src``/``att_dst``, ``bias``), so all heads keep one width, as torch-pruning's
channel groups (``heads``) demand. Input channels are columns of ``lin.weight``. ``lin`` is a plain ``nn.Linear``
(functionally torch-geometric's ``Linear``) so that MACs counters see it; ``GATConvPruner.macs_terms`` adds the
attention (scores, weighted messages, bias), which no counter sees.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..depgraph import BasePruningFunc, kept_indices
from ..layers import register_layer
from .registry import register


def _gatconv():
    from torch_geometric.nn import GATConv

    return GATConv


def make_gatconv(in_channels: int, out_channels: int, heads: int, concat: bool = True, dropout: float = 0.0):
    """A ``GATConv`` whose input projection is an ``nn.Linear`` (glorot init, no bias)."""
    conv = _gatconv()(in_channels, out_channels, heads=heads, concat=concat, dropout=dropout)
    conv.lin = nn.Linear(in_channels, heads * out_channels, bias=False)
    nn.init.xavier_uniform_(conv.lin.weight)
    return conv


class GATConvPruner(BasePruningFunc):
    """Removes head dimensions (out channels) or input features (in channels) of a ``GATConv``."""

    @staticmethod
    def _check(layer) -> None:
        if layer.lin is None or layer.lin_edge is not None or layer.res is not None:
            raise NotImplementedError("GATConvPruner handles GATConv with one input projection (no bipartite "
                                      "input, edge_dim or residual)")

    def _out_width(self, layer) -> int:
        return layer.heads * layer.out_channels if layer.concat else layer.out_channels

    def param_slices(self, layer, out: bool):
        """``(parameter name, dim, [index maps])`` owned by one channel (see ``sequence.LSTMPruner``)."""
        self._check(layer)
        H, C = layer.heads, layer.out_channels
        if not out:
            return [("lin.weight", 1, [lambda t: t])]
        if layer.concat:  # channel t = h*C + c
            res = [("lin.weight", 0, [lambda t: t]),
                   ("att_src", 2, [lambda t: t % C]), ("att_dst", 2, [lambda t: t % C])]
            if layer.bias is not None:
                res.append(("bias", 0, [lambda t: t]))
            return res
        heads = [lambda t, h=h: t + h * C for h in range(H)]  # channel t = c, shared by all heads (mean)
        res = [("lin.weight", 0, heads), ("att_src", 2, [lambda t: t]), ("att_dst", 2, [lambda t: t])]
        if layer.bias is not None:
            res.append(("bias", 0, [lambda t: t]))
        return res

    def prune_out_channels(self, layer, idxs) -> nn.Module:
        self._check(layer)
        H, C = layer.heads, layer.out_channels
        drop = torch.zeros(self._out_width(layer), dtype=torch.bool)
        drop[torch.as_tensor(list(idxs), dtype=torch.long)] = True
        if layer.concat:
            per_head = drop.view(H, C)
            if not (per_head == per_head[0]).all():
                raise ValueError("GATConv channels must be removed as whole head dimensions (the same c in every "
                                 "head); give torch-pruning this pruner so it groups channels by heads")
            drop = per_head[0]
        keep_c = (~drop).nonzero().flatten()
        rows = (torch.arange(H)[:, None] * C + keep_c[None, :]).flatten()
        layer.lin.weight = self._prune_parameter_and_grad(layer.lin.weight, rows, 0)
        layer.lin.out_features = len(rows)
        layer.att_src = self._prune_parameter_and_grad(layer.att_src, keep_c, 2)
        layer.att_dst = self._prune_parameter_and_grad(layer.att_dst, keep_c, 2)
        if layer.bias is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, rows if layer.concat else keep_c, 0)
        layer.out_channels = len(keep_c)
        return layer

    def prune_in_channels(self, layer, idxs) -> nn.Module:
        self._check(layer)
        keep = kept_indices(layer.in_channels, idxs)
        layer.lin.weight = self._prune_parameter_and_grad(layer.lin.weight, keep, 1)
        layer.lin.in_features = len(keep)
        layer.in_channels = len(keep)
        return layer

    def get_out_channels(self, layer) -> int:
        return self._out_width(layer)

    def get_in_channels(self, layer) -> int:
        return layer.in_channels

    def get_out_channel_groups(self, layer) -> int:
        return layer.heads if layer.concat else 1

    def macs_terms(self, layer, inputs, output):
        """MACs outside ``lin`` (which the counter sees): the two attention scores of every node and head
        (``x . att``), one weighted message per edge (self loops included) and head, and the bias; as terms
        ``(coef, [(param, dim)])`` meaning ``coef * prod(sizes)`` (see ``metaprune.cost``)."""
        x, edge_index = inputs[0], inputs[1]
        nodes = x.shape[layer.node_dim]
        edges = edge_index.shape[1] if isinstance(edge_index, torch.Tensor) else edge_index.nnz()
        if layer.add_self_loops and isinstance(edge_index, torch.Tensor):
            edges = int((edge_index[0] != edge_index[1]).sum()) + nodes
        terms = [(2.0 * nodes + edges, [("lin.weight", 0)])]  # lin.weight rows = heads * out_channels
        if layer.bias is not None:
            terms.append((float(nodes), [("bias", 0)]))
        return terms


def sync_gat_sizes(module: nn.Module) -> None:
    """Set ``in_channels``/``out_channels`` of every GATConv from its weight shapes (after a resize)."""
    GATConv = _gatconv()
    for m in module.modules():
        if isinstance(m, GATConv) and m.lin is not None:
            m.out_channels = m.att_src.shape[2]
            m.in_channels = m.lin.weight.shape[1]
            m.lin.out_features, m.lin.in_features = m.lin.weight.shape


class GATNodeClassifier(nn.Module):
    """Two ``GATConv`` layers over a fixed graph; ``forward(node_ids) -> logits [len(node_ids), classes]``."""

    def __init__(self, node_features: torch.Tensor, edge_index: torch.Tensor, hidden: int = 8, heads: int = 4,
                 num_classes: int = 5, out_heads: int = 1, dropout: float = 0.2):
        super().__init__()
        self.register_buffer("node_features", node_features.float().clone())
        self.register_buffer("edge_index", edge_index.long().clone())
        self.dropout = dropout
        self.conv1 = make_gatconv(node_features.shape[1], hidden, heads, concat=True)
        self.conv2 = make_gatconv(hidden * heads, num_classes, out_heads, concat=False)
        self._register_load_state_dict_pre_hook(self._sizes_from_state)

    def _sizes_from_state(self, state_dict, prefix, *args):
        sync_gat_sizes(self)

    def forward(self, node_ids: torch.Tensor) -> torch.Tensor:
        if node_ids.dtype not in (torch.long, torch.int, torch.int32):
            raise ValueError(f"gat takes node ids (an integer tensor), got dtype {node_ids.dtype}")
        h = F.dropout(self.node_features, self.dropout, self.training)
        h = F.elu(self.conv1(h, self.edge_index))
        h = F.dropout(h, self.dropout, self.training)
        return self.conv2(h, self.edge_index)[node_ids.long()]


register_layer(_gatconv(), pruner=GATConvPruner())


@register("gat")
def gat(in_channels: int = 32, hidden: int = 8, heads: int = 4, num_classes: int = 5, out_heads: int = 1,
        dropout: float = 0.2, graph: str = "sbm", graph_seed: int = 0) -> nn.Module:
    """GAT on the graph of registered dataset ``graph`` (generated with ``graph_seed``)."""
    from ..data import get_data, synthetic  # noqa: F401  (registers the graph datasets)

    info = get_data(graph, seed=graph_seed).info
    if "graph" not in info:
        raise ValueError(f"gat needs a graph dataset; {graph!r} has no info['graph'] (try 'sbm')")
    x, edge_index = info["graph"]["x"], info["graph"]["edge_index"]
    if x.shape[1] != in_channels:
        raise ValueError(f"gat in_channels={in_channels} but graph {graph!r} has {x.shape[1]} node features")
    return GATNodeClassifier(x, edge_index, hidden, heads, num_classes, out_heads, dropout)
