"""NetGraph rules of the layer types torch-pruning handles only with a custom pruner: ``nn.LSTM`` and
torch-geometric's ``GATConv``. Registered with :func:`metaprune.layers.register_layer`; a user's layer
type gets a rule the same way (``docs/custom_layers.md``).

LSTM, per layer ``l`` with ``H`` hidden units: the four gate pre-activations of every hidden unit are
nodes (``lstm_gate_i/f/g/o``, the rows of ``weight_ih_l{l}`` in order, ``bias_ih`` as their bias); the
recurrent pre-activations are nodes of their own (``lstm_recurrent``, rows of ``weight_hh_l{l}``,
``bias_hh`` as bias) joined to the gates by constant ``residual`` edges (the sum); each gate drives its
hidden unit (``lstm_hidden``, constant ``lstm_gate`` edges); ``weight_hh`` edges run from the hidden units
back to the recurrent nodes. Hidden unit ``j`` of the LSTM (all layers: ``nn.LSTM`` has one width) owns
its 9 nodes in every layer.

GATConv with ``heads`` x ``C``: the input projection's neurons (``gat_head``, head-major like ``lin.weight``'s
rows) take ``lin.weight`` edges; ``att_src`` / ``att_dst`` entries are edges from each neuron to its head's
score node (``gat_score_src`` / ``gat_score_dst``); ``bias`` sits on the output neurons: the head neurons
themselves when heads are concatenated, else ``C`` ``gat_mean`` nodes fed by constant ``head_mean`` edges.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layers import register_layer
from .trace import GraphConversionError

_GATES = ("lstm_gate_i", "lstm_gate_f", "lstm_gate_g", "lstm_gate_o")


def lstm_rule(layer: nn.LSTM, g):
    if layer.bidirectional or getattr(layer, "proj_size", 0):
        raise GraphConversionError(f"LSTM {g.name!r}: bidirectional LSTMs and proj_size are not supported")
    H = layer.hidden_size
    inp = g.input_nodes(layer.input_size)
    owned = []
    for l in range(layer.num_layers):
        gates = torch.cat([g.nodes(H, t) for t in _GATES])
        recurrent = g.nodes(4 * H, "lstm_recurrent")
        hidden = g.nodes(H, "lstm_hidden")
        g.weight(f"weight_ih_l{l}", gates, inp, "lstm_ih")
        g.weight(f"weight_hh_l{l}", recurrent, hidden, "lstm_hh")
        if layer.bias:
            g.feature(f"bias_ih_l{l}", gates, "bias")
            g.feature(f"bias_hh_l{l}", recurrent, "bias")
        g.constant(recurrent, gates, "residual")
        g.constant(gates, hidden.repeat(4), "lstm_gate")
        owned += [gates.view(4, H).t(), recurrent.view(4, H).t(), hidden[:, None]]
        inp = hidden
    return inp, torch.cat(owned, 1)


def gatconv_rule(layer, g):
    if layer.lin is None or not isinstance(layer.lin, nn.Linear) or layer.lin.bias is not None \
            or getattr(layer, "lin_edge", None) is not None or getattr(layer, "res", None) is not None:
        raise GraphConversionError(f"GATConv {g.name!r}: only one bias-free nn.Linear input projection "
                                   "(no bipartite input, edge_dim or residual) is supported")
    heads, C = layer.heads, layer.out_channels
    inp = g.input_nodes(layer.lin.in_features)
    neurons = g.nodes(heads * C, "gat_head")
    g.weight("lin.weight", neurons, inp, "linear")
    head_of = torch.arange(heads).repeat_interleave(C)
    for kind in ("src", "dst"):
        score = g.nodes(heads, f"gat_score_{kind}")
        g.edges(f"att_{kind}", neurons, score[head_of], f"gat_att_{kind}", free_axis=2)
    if layer.concat:
        out, owned = neurons, neurons[:, None]
    else:
        out = g.nodes(C, "gat_mean")
        g.constant(neurons, out.repeat(heads), "head_mean")
        owned = torch.cat([out[:, None], neurons.view(heads, C).t()], 1)
    if layer.bias is not None:
        g.feature("bias", out, "bias")
    return out, owned


register_layer(nn.LSTM, graph_rule=lstm_rule)
try:
    from torch_geometric.nn import GATConv
except ImportError:  # pragma: no cover - torch-geometric is a dependency
    GATConv = None
if GATConv is not None:
    register_layer(GATConv, graph_rule=gatconv_rule)
