"""The message-passing layer of the metanetwork: edge and node states updated along both edge directions."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch_geometric.nn import MessagePassing

AGGREGATORS = ("mean", "sum", "max", "min", "std")
_STD_EPS = 1e-5  # torch-geometric's StdAggregation: sqrt(clamp(var, eps)), zero where var <= eps


def aggregators(aggr) -> list[str]:
    """``aggr`` ("mean" or a list such as ["mean", "max", "std"]) as a checked list of aggregator names."""
    names = [aggr] if isinstance(aggr, str) else list(aggr)
    bad = [a for a in names if a not in AGGREGATORS]
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"metanet.aggr={aggr!r} is invalid: one of {', '.join(AGGREGATORS)} or a list of "
                         "distinct ones (combined as in PNA)")
    return names


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


def reset_mlp(m: nn.Module) -> None:
    for layer in m.modules():
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()


class EdgeNodeConv(MessagePassing):
    r"""One round of edge-and-node message passing over a network graph, in both edge directions.

    Node :math:`i` is a neuron with state :math:`\mathbf{h}_i`; edge :math:`(i, j)` (input neuron :math:`i`,
    output neuron :math:`j`) is the weight slice connecting them, with state :math:`\mathbf{e}_{ij}`.

    .. math::
        \mathbf{e}'_{ij} &= \mathrm{LN}\big(\mathbf{e}_{ij} + \phi_e(\mathbf{W}_s\mathbf{h}_i + \mathbf{W}_d\mathbf{h}_j
            + \mathbf{W}_e\mathbf{e}_{ij})\big)

        \mathbf{m}^{\rightarrow}_j &= \bigoplus_{i \to j} \sigma(\mathbf{A}_f\mathbf{h}_i + \mathbf{B}_f\mathbf{e}'_{ij})
        \qquad
        \mathbf{m}^{\leftarrow}_i = \bigoplus_{i \to j} \sigma(\mathbf{A}_b\mathbf{h}_j + \mathbf{B}_b\mathbf{e}'_{ij})

        \mathbf{h}'_i &= \mathrm{LN}\big(\mathbf{h}_i + \phi_h([\mathbf{h}_i \,\|\, \mathbf{m}^{\rightarrow}_i
            \,\|\, \mathbf{m}^{\leftarrow}_i])\big)

    :math:`\bigoplus` is the configured aggregation (``mean`` keeps messages comparable across layer widths); a
    list such as ``["mean", "max", "std"]`` concatenates several aggregators, as PNA does (Corso et al., 2020),
    so a neuron sees the spread and the extremes of its connections, not only their average.
    Every map is shared across nodes and edges, so the layer is equivariant to node permutations.
    """

    def __init__(self, hidden: int, aggr="mean"):
        self.aggr_names = aggregators(aggr)
        super().__init__(aggr=self.aggr_names[0] if len(self.aggr_names) == 1 else list(self.aggr_names),
                         node_dim=0)
        self.hidden = hidden
        self.edge_src = nn.Linear(hidden, hidden, bias=False)
        self.edge_dst = nn.Linear(hidden, hidden, bias=False)
        self.edge_self = nn.Linear(hidden, hidden)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden))
        self.fwd_node = nn.Linear(hidden, hidden, bias=False)
        self.fwd_edge = nn.Linear(hidden, hidden)
        self.bwd_node = nn.Linear(hidden, hidden, bias=False)
        self.bwd_edge = nn.Linear(hidden, hidden)
        self.node_update = mlp((1 + 2 * len(self.aggr_names)) * hidden, hidden, hidden)
        self.edge_norm = nn.LayerNorm(hidden)
        self.node_norm = nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in (self.edge_src, self.edge_dst, self.edge_self, self.edge_out, self.fwd_node, self.fwd_edge,
                  self.bwd_node, self.bwd_edge, self.node_update):
            reset_mlp(m)
        self.edge_norm.reset_parameters()
        self.node_norm.reset_parameters()

    def forward(self, h: Tensor, e: Tensor, edge_index: Tensor) -> tuple[Tensor, Tensor]:
        src, dst = edge_index
        e = self.edge_norm(e + self.edge_out(self.edge_src(h)[src] + self.edge_dst(h)[dst] + self.edge_self(e)))
        size = (h.size(0), h.size(0))
        fwd = self.propagate(edge_index, x=self.fwd_node(h), e=self.fwd_edge(e), size=size)
        bwd = self.propagate(edge_index.flip(0), x=self.bwd_node(h), e=self.bwd_edge(e), size=size)
        h = self.node_norm(h + self.node_update(torch.cat([h, fwd, bwd], dim=-1)))
        return h, e

    @torch.no_grad()
    def forward_chunked_(self, h: Tensor, e: Tensor, edge_index: Tensor, chunk: int) -> Tensor:
        """:meth:`forward` without autograd, ``chunk`` edges at a time: ``e`` is updated in place and only
        per-chunk temporaries are allocated (the edge states of ViT-B/16 alone are 86M x hidden). Returns h'."""
        src, dst = edge_index
        N, E = h.size(0), e.size(0)
        h_src, h_dst, x_fwd, x_bwd = self.edge_src(h), self.edge_dst(h), self.fwd_node(h), self.bwd_node(h)
        fwd, bwd = _ChunkAggregate(self.aggr_names, N, h), _ChunkAggregate(self.aggr_names, N, h)
        for a in range(0, E, chunk):
            s, d, ec = src[a:a + chunk], dst[a:a + chunk], e[a:a + chunk]
            ec.copy_(self.edge_norm(ec + self.edge_out(h_src[s] + h_dst[d] + self.edge_self(ec))))
            fwd.add(d, self.message(x_fwd[s], self.fwd_edge(ec)))
            bwd.add(s, self.message(x_bwd[d], self.bwd_edge(ec)))
        return self.node_norm(h + self.node_update(torch.cat([h, fwd.result(), bwd.result()], dim=-1)))

    def message(self, x_j: Tensor, e: Tensor) -> Tensor:
        return torch.nn.functional.silu(x_j + e)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.hidden}, aggr={self.aggr_names})"


class _ChunkAggregate:
    """Running sums / extremes of messages arriving chunk by chunk, finished into the same aggregations as
    torch-geometric's (mean, sum, max, min, std; nodes without messages get 0), concatenated in order."""

    def __init__(self, names, n: int, like: Tensor):
        self.names, d = names, like.size(1)
        self.deg = like.new_zeros(n, 1)
        self.sum = like.new_zeros(n, d)
        self.sq = like.new_zeros(n, d) if "std" in names else None
        self.max = like.new_full((n, d), -torch.inf) if "max" in names else None
        self.min = like.new_full((n, d), torch.inf) if "min" in names else None

    def add(self, node: Tensor, msg: Tensor) -> None:
        self.deg.index_add_(0, node, msg.new_ones(len(node), 1))
        self.sum.index_add_(0, node, msg)
        if self.sq is not None:
            self.sq.index_add_(0, node, msg * msg)
        if self.max is not None:
            self.max.index_reduce_(0, node, msg, "amax")
        if self.min is not None:
            self.min.index_reduce_(0, node, msg, "amin")

    def result(self) -> Tensor:
        deg = self.deg.clamp_min(1)
        mean = self.sum / deg
        out = {"sum": self.sum, "mean": mean}
        if self.max is not None:
            out["max"] = self.max.nan_to_num(neginf=0.0)
        if self.min is not None:
            out["min"] = self.min.nan_to_num(posinf=0.0)
        if self.sq is not None:
            std = (self.sq / deg - mean * mean).clamp_min(_STD_EPS).sqrt()
            out["std"] = std.masked_fill(std <= _STD_EPS ** 0.5, 0.0)
        return torch.cat([out[a] for a in self.names], dim=-1)
