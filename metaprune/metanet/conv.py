"""The message-passing layer of the metanetwork: edge and node states updated along both edge directions."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch_geometric.nn import MessagePassing


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

    :math:`\bigoplus` is the configured aggregation (``mean`` keeps messages comparable across layer widths).
    Every map is shared across nodes and edges, so the layer is equivariant to node permutations.
    """

    def __init__(self, hidden: int, aggr: str = "mean"):
        super().__init__(aggr=aggr, node_dim=0)
        self.hidden = hidden
        self.edge_src = nn.Linear(hidden, hidden, bias=False)
        self.edge_dst = nn.Linear(hidden, hidden, bias=False)
        self.edge_self = nn.Linear(hidden, hidden)
        self.edge_out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden))
        self.fwd_node = nn.Linear(hidden, hidden, bias=False)
        self.fwd_edge = nn.Linear(hidden, hidden)
        self.bwd_node = nn.Linear(hidden, hidden, bias=False)
        self.bwd_edge = nn.Linear(hidden, hidden)
        self.node_update = mlp(3 * hidden, hidden, hidden)
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
        if self.aggr == "max":  # running max over chunks; nodes without messages end at 0 as in torch-geometric
            fwd, bwd = h.new_full((N, self.hidden), -torch.inf), h.new_full((N, self.hidden), -torch.inf)
        else:
            fwd, bwd = h.new_zeros(N, self.hidden), h.new_zeros(N, self.hidden)
        for a in range(0, E, chunk):
            s, d, ec = src[a:a + chunk], dst[a:a + chunk], e[a:a + chunk]
            ec.copy_(self.edge_norm(ec + self.edge_out(h_src[s] + h_dst[d] + self.edge_self(ec))))
            for out, node, msg in ((fwd, d, self.message(x_fwd[s], self.fwd_edge(ec))),
                                   (bwd, s, self.message(x_bwd[d], self.bwd_edge(ec)))):
                if self.aggr == "max":
                    out.index_reduce_(0, node, msg, "amax")
                else:
                    out.index_add_(0, node, msg)
        if self.aggr == "max":
            fwd, bwd = fwd.nan_to_num(neginf=0.0), bwd.nan_to_num(neginf=0.0)
        elif self.aggr == "mean":
            deg_in = torch.bincount(dst, minlength=N).clamp_min(1).unsqueeze(1).to(h.dtype)
            deg_out = torch.bincount(src, minlength=N).clamp_min(1).unsqueeze(1).to(h.dtype)
            fwd, bwd = fwd / deg_in, bwd / deg_out
        return self.node_norm(h + self.node_update(torch.cat([h, fwd, bwd], dim=-1)))

    def message(self, x_j: Tensor, e: Tensor) -> Tensor:
        return torch.nn.functional.silu(x_j + e)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.hidden}, aggr={self.aggr})"
