"""Global, architecture-independent vocabularies of node types, node feature slots and edge types.

Ids never depend on the model being converted, so a metanetwork trained on one architecture reads
another. Edge types name the kernel shape of the weight slice an edge carries; a shape not in
``EDGE_TYPES`` still gets a deterministic id from :func:`edge_type_id`.
"""
from __future__ import annotations

import re
import zlib

# Node types: what kind of neuron a node is.
NODE_TYPES: list[str] = [
    "input",           # a channel of the network input
    "conv",            # an output channel of a (grouped) convolution
    "depthwise_conv",  # an output channel of a depthwise convolution
    "linear",          # an output neuron of a linear layer
    "residual",        # a channel of the sum of several branches (add / sub)
    "product",         # a channel of an elementwise product / quotient of several branches (gates)
    "concat",          # a channel of a channel-wise concatenation
    "norm",            # a normalised copy of a channel space that already carried other norm parameters
    "parameter",       # a row of a raw nn.Parameter added / concatenated onto a channel space (cls token, positions)
    "attention_qkv",   # an output neuron of an attention input projection (q, k and v rows, in that order)
    "attention_out",   # an output neuron of an attention output projection
    "embedding_input",  # a row (token id) of an nn.Embedding table
    "embedding",       # an output channel of an nn.Embedding
    # LSTM (one set per layer; hidden unit j owns gate nodes j, H+j, 2H+j, 3H+j and recurrent nodes alike)
    "lstm_gate_i",     # input-gate pre-activation of a hidden unit: W_ih x + b_ih (input projection)
    "lstm_gate_f",     # forget gate, same
    "lstm_gate_g",     # cell candidate, same
    "lstm_gate_o",     # output gate, same
    "lstm_recurrent",  # recurrent pre-activation of one gate of one hidden unit: W_hh h + b_hh
    "lstm_hidden",     # a hidden unit (the layer's output channel, read back by the recurrent edges)
    # torch-geometric GATConv
    "gat_head",        # a neuron of the input projection (head h, dimension c), the layer's output with concat
    "gat_score_src",   # the source attention score of one head (reads att_src over its head's neurons)
    "gat_score_dst",   # the destination attention score of one head (reads att_dst)
    "gat_mean",        # an output channel of a GATConv that averages its heads (concat=False)
]
NODE_TYPE_ID = {n: i for i, n in enumerate(NODE_TYPES)}

# Node feature slots: column j of ``graph.x`` holds NODE_FEATURES[j] of that neuron (0 where absent; see x_mask).
NODE_FEATURES: list[str] = ["bias", "norm_weight", "norm_bias", "running_mean", "running_var"]
F_NODE = len(NODE_FEATURES)
SLOT = {n: i for i, n in enumerate(NODE_FEATURES)}

# Edge types with fixed ids. Convolutions are named by kernel shape ("conv3x3", 1-D "conv3", 3-D
# "conv3x3x3"); "linear_S" is a linear layer reading S positions per input channel (a flattened
# C x H x W map, S = H*W). Edge types in CONSTANT_EDGE_TYPES carry a constant 1.0, not a parameter.
EDGE_TYPES: list[str] = [
    "residual", "concat", "identity", "product",
    "parameter", "embedding", "linear",
    "conv1x1", "conv3x3", "conv5x5", "conv7x7", "conv2x2", "conv4x4",
    "conv1x3", "conv3x1", "conv1x5", "conv5x1", "conv1x7", "conv7x1",
    "conv8x8", "conv14x14", "conv16x16", "conv32x32",
    "conv1", "conv3", "conv5", "conv7",
    "conv1x1x1", "conv3x3x3",
    "lstm_ih",        # input -> gate pre-activation (a weight_ih entry)
    "lstm_hh",        # hidden unit -> recurrent pre-activation (a weight_hh entry)
    "lstm_gate",      # constant: gate pre-activation -> the hidden unit it drives
    "gat_att_src",    # head neuron -> its head's source score (an att_src entry)
    "gat_att_dst",    # head neuron -> its head's destination score (an att_dst entry)
    "head_mean",      # constant: head neuron -> averaged output channel
]
CONSTANT_EDGE_TYPES = frozenset({"residual", "concat", "identity", "product", "lstm_gate", "head_mean"})
_HASHED_BASE = 1024  # ids of edge types outside EDGE_TYPES start here
_NAMES_SEEN: dict[int, str] = {}


def edge_type_id(name: str) -> int:
    """Deterministic id of edge type ``name``: its index in EDGE_TYPES, else a CRC32-derived id >= 1024."""
    if name in _FIXED:
        return _FIXED[name]
    i = _HASHED_BASE + zlib.crc32(name.encode()) % (1 << 20)
    _NAMES_SEEN[i] = name
    return i


def edge_type_name(i: int) -> str:
    """Inverse of :func:`edge_type_id` (for hashed ids, names seen in this process)."""
    if 0 <= i < len(EDGE_TYPES):
        return EDGE_TYPES[i]
    if i in _NAMES_SEEN:
        return _NAMES_SEEN[i]
    raise KeyError(f"unknown edge type id {i}")


def edge_feature_size(name: str) -> int:
    """Number of features per edge of type ``name`` (k*k for a kxk conv, S for linear_S, else 1)."""
    m = re.fullmatch(r"conv(\d+(?:x\d+)*)", name)
    if m:
        k = 1
        for d in m.group(1).split("x"):
            k *= int(d)
        return k
    m = re.fullmatch(r"linear_(\d+)", name)
    if m:
        return int(m.group(1))
    return 1


def conv_edge_type(kernel_size) -> str:
    return "conv" + "x".join(str(int(k)) for k in kernel_size)


_FIXED = {n: i for i, n in enumerate(EDGE_TYPES)}
