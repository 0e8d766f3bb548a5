"""Network <-> graph: ``to_graph(model, example_inputs)``, ``from_graph(graph, model)``, ``graph_params(graph)``.

A :class:`NetGraph` has one node per neuron (network input channels, output channels of every conv /
linear / attention projection / embedding, channels of residual sums and concatenations, rows of raw
parameters) and one edge per weight connection. ``x`` [N, F_NODE] holds per-neuron parameters in the
slots named by ``NODE_FEATURES`` (bias, norm weight / bias, running mean / var), ``x_mask`` marks the
slots that hold one. ``edge_index`` [2, E] (row 0 = input neuron, row 1 = output neuron) is sorted by
``edge_type``; ``edge_attr`` is FLAT: the edges of type t form one block and each carries
``edge_feature_size(name)`` values (a kxk kernel, a scalar, ...); read it with ``graph.edge_features(t)``.
``to_graph(model, example_inputs, groups=True)`` also fills ``graph.groups``: the channel groups of
``metaprune.depgraph.groups`` (output layers ignored; same roots, kinds and units, in the same order) as
:class:`NodeGroup` whose ``nodes[c]`` are the graph nodes that removing unit c of the group removes (-1 padded).
The private layout makes the conversion bijective and bit-exact for every parameter and buffer.
"""
from . import rules  # noqa: F401  (registers the LSTM and GATConv rules)
from .convert import LayerGraph, NodeGroup, to_graph
from .netgraph import NetGraph, from_graph, graph_params
from .trace import GraphConversionError
from .vocab import (
    CONSTANT_EDGE_TYPES,
    EDGE_TYPES,
    F_NODE,
    NODE_FEATURES,
    NODE_TYPES,
    edge_feature_size,
    edge_type_id,
    edge_type_name,
)

__all__ = [
    "to_graph", "from_graph", "graph_params", "NetGraph", "NodeGroup", "LayerGraph", "GraphConversionError",
    "NODE_TYPES", "NODE_FEATURES", "F_NODE", "EDGE_TYPES", "CONSTANT_EDGE_TYPES",
    "edge_type_id", "edge_type_name", "edge_feature_size",
]
