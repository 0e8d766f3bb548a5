"""The metanetwork: a GNN that reads a NetGraph and returns the same graph with new features (weights).

Typed encoders (one per node type and per edge type, keyed by the type's *name*, so a new architecture
reuses the encoders of the types it shares with the zoo), ``layers`` rounds of :class:`EdgeNodeConv`, typed
decoders, and a residual output ``new = old + scale * rms_t * delta`` where ``rms_t`` is the root mean square
of the type's features in this graph (so ``scale`` is a relative change). Decoders start at zero: an untrained
metanetwork is the identity. Padding slots of node features (``x_mask`` false) never change.

``mode="gain"`` rewrites no weight freely: it multiplies all the incoming weights of each batch-normalised neuron
(a node with a ``running_var`` slot) by one gain ``exp(scale * tanh(out))``. After the batch norm's statistics
are re-estimated the network computes exactly what it did (the norm divides the gain out), so the rewrite cannot
cost accuracy; what it changes is each unit's weight norm, i.e. which units norm pruning keeps, within a layer and,
under global ranking, how many units each layer keeps. Neurons without a batch norm (ViTs, classifiers) keep
their weights.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torch import Tensor

from .. import graph as G
from .conv import EdgeNodeConv, aggregators, mlp

_EPS = 1e-8
MODES = ("delta", "gain")
CHUNK_EDGES = 1 << 21  # without autograd, graphs with more edges run chunk by chunk (Metanet._forward_chunked)


def symlog(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def _namer(vocab):
    """id -> name for a vocabulary given as a list, a dict name -> id, or a function."""
    if callable(vocab):
        return vocab
    if isinstance(vocab, dict):
        inverse = {i: n for n, i in vocab.items()}
        return inverse.__getitem__
    return list(vocab).__getitem__


def type_names(graph):
    """Functions id -> name for the node and edge types of ``graph``: its own ``node_type_names`` /
    ``edge_type_names`` when it carries them, else :mod:`metaprune.graph`'s global vocabularies."""
    node = getattr(graph, "node_type_names", None)
    edge = getattr(graph, "edge_type_names", None)
    if node is None or edge is None:
        node = node if node is not None else G.NODE_TYPES
        edge = edge if edge is not None else G.edge_type_name
    return _namer(node), _namer(edge)


def constant_edge_types(graph) -> frozenset:
    """Edge types that carry a constant (a residual identity), not a parameter: never rewritten."""
    const = getattr(graph, "constant_edge_types", None)
    return frozenset(G.CONSTANT_EDGE_TYPES if const is None else const)


def _edge_layout(graph) -> list[tuple[int, Tensor, slice, int]]:
    """(type id, edge positions, slice of the flat edge_attr, feature width) for each edge type, in block order."""
    out, offset = [], 0
    for t in graph.edge_type_ids():
        t = int(t)
        pos = graph.edge_slice(t)
        feats = graph.edge_features(t)
        ids = torch.arange(pos.start, pos.stop, device=graph.edge_index.device)
        out.append((t, ids, slice(offset, offset + feats.numel()), feats.shape[1]))
        offset += feats.numel()
    return out


class Metanet(nn.Module):
    """Edge-and-node message passing over a NetGraph with typed encoders/decoders and a residual output.

    ``node_types``: names of the node types with their own encoder; ``edge_types``: name -> feature width of
    the edge types with their own encoder; ``f_node``: node feature slots (``x.shape[1]``); ``frozen_slots``:
    node feature columns never rewritten (running statistics by default: they describe the data, not weights);
    ``constant_edges``: edge types that carry a constant (residual identities), encoded but never rewritten.
    ``unseen``: what an unknown type does: ``width`` reuses the first known type with the same feature width
    (warning once), ``error`` refuses the graph. ``mode``: ``delta`` (a residual change of every weight) or
    ``gain`` (one gain per batch-normalised neuron on its incoming weights; ``gain_slot``: the node feature column
    present exactly on batch-normalised neurons, the running variance).
    """

    def __init__(self, node_types, edge_types: dict, f_node: int, hidden: int = 32, layers: int = 4,
                 aggr="mean", scale: float = 0.05, frozen_slots=(), constant_edges=(), unseen: str = "width",
                 mode: str = "delta", gain_slot: int | None = None):
        super().__init__()
        if unseen not in ("width", "error"):
            raise ValueError(f"metanet.unseen={unseen!r} is invalid: must be width or error")
        if mode not in MODES:
            raise ValueError(f"metanet.mode={mode!r} is invalid: must be one of {', '.join(MODES)}")
        if mode == "gain" and (gain_slot is None or not 0 <= int(gain_slot) < f_node):
            raise ValueError(f"metanet.mode=gain needs gain_slot, the node feature column of the running variance "
                             f"(one of the {f_node} slots), got {gain_slot!r}")
        aggr = aggregators(aggr)
        aggr = aggr[0] if len(aggr) == 1 else aggr
        if hidden < 1 or layers < 0:
            raise ValueError(f"metanet.hidden={hidden} and metanet.layers={layers} must be >= 1 and >= 0")
        if not 0 < scale <= 10:
            raise ValueError(f"metanet.scale={scale} is invalid: must be in (0, 10]")
        bad = [i for i in frozen_slots if not 0 <= int(i) < f_node]
        if bad:
            raise ValueError(f"metanet frozen_slots {bad} are outside the {f_node} node feature slots")
        self.config = {"node_types": list(node_types), "edge_types": {k: int(v) for k, v in edge_types.items()},
                       "f_node": int(f_node), "hidden": int(hidden), "layers": int(layers), "aggr": aggr,
                       "scale": float(scale), "frozen_slots": sorted(int(i) for i in frozen_slots),
                       "constant_edges": sorted(constant_edges), "unseen": unseen, "mode": mode,
                       "gain_slot": None if gain_slot is None else int(gain_slot)}
        self.mode = mode
        self.f_node, self.hidden, self.scale, self.unseen = int(f_node), int(hidden), float(scale), unseen
        self.constant_edges = frozenset(constant_edges)
        writable = torch.ones(f_node)
        writable[list(self.config["frozen_slots"])] = 0
        self.register_buffer("writable", writable, persistent=False)
        self.node_enc = nn.ModuleDict({n: mlp(2 * f_node, hidden, hidden) for n in node_types})
        gain = mode == "gain"  # one output per neuron (its gain) instead of a change of every feature
        self.node_dec = nn.ModuleDict({n: nn.Linear(hidden, 1 if gain else f_node) for n in node_types})
        self.edge_enc = nn.ModuleDict({n: mlp(k, hidden, hidden) for n, k in edge_types.items()})
        self.edge_dec = nn.ModuleDict({} if gain else {n: nn.Linear(hidden, k) for n, k in edge_types.items()
                                                       if n not in self.constant_edges})
        self.convs = nn.ModuleList([EdgeNodeConv(hidden, aggr) for _ in range(layers)])
        self._warned: set[str] = set()
        self.reset_parameters()

    @classmethod
    def for_graphs(cls, graphs, frozen_features=("running_mean", "running_var"), node_features=None,
                   **cfg) -> "Metanet":
        """A metanetwork with encoders for every node and edge type found in ``graphs``.

        ``frozen_features``: names (in ``node_features``, default :data:`metaprune.graph.NODE_FEATURES`) of
        node feature slots the metanetwork leaves unchanged."""
        node_types, edge_types, f_node, const = [], {}, None, set()
        for g in graphs:
            node_name, edge_name = type_names(g)
            f_node = g.x.shape[1] if f_node is None else f_node
            if g.x.shape[1] != f_node:
                raise ValueError(f"graphs disagree on node feature slots: {g.x.shape[1]} vs {f_node}")
            for t in torch.unique(g.node_type).tolist():
                if node_name(t) not in node_types:
                    node_types.append(node_name(t))
            for t, _, _, k in _edge_layout(g):
                name = edge_name(t)
                if edge_types.setdefault(name, k) != k:
                    raise ValueError(f"edge type {name!r} has width {k} in one graph and {edge_types[name]} in another")
            const |= constant_edge_types(g) & set(edge_types)
        if frozen_features:
            if node_features is None:
                node_features = G.NODE_FEATURES
            unknown = [f for f in frozen_features if f not in node_features]
            if unknown:
                raise ValueError(f"metanet.frozen_features {unknown} are not node features {list(node_features)}")
            cfg["frozen_slots"] = [list(node_features).index(f) for f in frozen_features]
        if cfg.get("mode") == "gain" and cfg.get("gain_slot") is None:
            names = list(node_features if node_features is not None else G.NODE_FEATURES)
            if "running_var" not in names:
                raise ValueError("metanet.mode=gain needs a running_var node feature to find batch-normalised neurons")
            cfg["gain_slot"] = names.index("running_var")
        return cls(sorted(node_types), dict(sorted(edge_types.items())), f_node, constant_edges=sorted(const), **cfg)

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()
        for enc in list(self.node_enc.values()) + list(self.edge_enc.values()):
            for m in enc.modules():
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
        for dec in list(self.node_dec.values()) + list(self.edge_dec.values()):
            nn.init.zeros_(dec.weight)  # untrained metanetwork = identity
            nn.init.zeros_(dec.bias)

    def unseen_types(self, graph) -> list[str]:
        """Node and edge types of ``graph`` this metanetwork has no encoder of its own for (it was never
        trained on such neurons or weights), as ``node:<name>`` / ``edge:<name>``."""
        node_name, edge_name = type_names(graph)
        nodes = {f"node:{node_name(t)}" for t in torch.unique(graph.node_type).tolist()
                 if node_name(t) not in self.config["node_types"]}
        edges = {f"edge:{edge_name(t)}" for t in graph.edge_type_ids() if edge_name(t) not in self.config["edge_types"]}
        return sorted(nodes | edges)

    def _resolve(self, kind: str, name: str, width: int) -> str:
        known = self.config["node_types"] if kind == "node" else self.config["edge_types"]
        if name in known:
            return name
        same = [n for n in known if kind == "node" or self.config["edge_types"][n] == width]
        if self.unseen == "error" or not same:
            raise ValueError(f"metanetwork has no encoder for {kind} type {name!r} (width {width}); it knows "
                             f"{sorted(known)}. Train it on a zoo with this layer kind, or set metanet.unseen=width")
        if name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"metanetwork: unseen {kind} type {name!r} uses the encoder of {same[0]!r}")
        return same[0]

    def forward(self, graph) -> tuple[Tensor, Tensor]:
        """New node features ``x`` [N, F_NODE] and flat edge features ``edge_attr`` for ``graph``."""
        node_name, edge_name = type_names(graph)
        const = constant_edge_types(graph)
        x, mask = graph.x, graph.x_mask.to(graph.x.dtype)
        if x.shape[1] != self.f_node:
            raise ValueError(f"graph has {x.shape[1]} node feature slots; this metanetwork reads {self.f_node}")

        # features are normalised per type on the way in (rms over the graph), deltas rescaled on the way out
        nodes = [(self._resolve("node", node_name(t), self.f_node), (graph.node_type == t).nonzero(as_tuple=True)[0])
                 for t in torch.unique(graph.node_type).tolist()]
        node_rms = torch.ones_like(x)
        h = x.new_zeros(x.shape[0], self.hidden)
        for name, ids in nodes:
            xt, mt = x[ids] * mask[ids], mask[ids]
            rms = (xt.pow(2).sum(0) / mt.sum(0).clamp_min(1)).sqrt().clamp_min(_EPS).detach()
            node_rms = node_rms.index_copy(0, ids, rms.expand_as(xt))
            h = h.index_copy(0, ids, self.node_enc[name](torch.cat([symlog(xt / rms), mt], dim=-1)))

        E = graph.edge_index.shape[1]
        if not torch.is_grad_enabled() and E > CHUNK_EDGES:
            return self._forward_chunked(graph, x, mask, nodes, node_rms, h, node_name, edge_name, const)
        edges = []
        e = x.new_zeros(E, self.hidden)
        for t, ids, sl, k in _edge_layout(graph):
            name = self._resolve("edge", edge_name(t), k)
            w = graph.edge_attr[sl].view(len(ids), k)
            rms = w.pow(2).mean().sqrt().clamp_min(_EPS).detach()
            e = e.index_copy(0, ids, self.edge_enc[name](symlog(w / rms)))
            if edge_name(t) not in const and (self.mode == "gain" or name in self.edge_dec):
                edges.append((name, ids, sl, rms))

        for conv in self.convs:
            h, e = conv(h, e, graph.edge_index)

        if self.mode == "gain":
            gain = self._gains(graph, nodes, h)
            factor = torch.ones_like(graph.edge_attr)
            for _, ids, sl, _ in edges:
                k = (sl.stop - sl.start) // max(len(ids), 1)
                positions = torch.arange(sl.start, sl.stop, device=factor.device)
                factor = factor.index_copy(0, positions, gain[graph.edge_index[1, ids]].repeat_interleave(k))
            return x, graph.edge_attr * factor

        new_x = self._decode_nodes(x, mask, nodes, node_rms, h)

        d_attr = torch.zeros_like(graph.edge_attr)
        for name, ids, sl, rms in edges:
            positions = torch.arange(sl.start, sl.stop, device=d_attr.device)
            d_attr = d_attr.index_copy(0, positions, self.edge_dec[name](e[ids]).reshape(-1) * rms)
        return new_x, graph.edge_attr + self.scale * d_attr

    def _gains(self, graph, nodes, h) -> Tensor:
        """Per node: the gain on its incoming weights, ``exp(scale * tanh(out))`` on batch-normalised neurons,
        1 elsewhere (``mode="gain"``)."""
        log_gain = h.new_zeros(h.shape[0])
        for name, ids in nodes:
            log_gain = log_gain.index_copy(0, ids, torch.tanh(self.node_dec[name](h[ids]).squeeze(-1)))
        normalised = graph.x_mask[:, self.config["gain_slot"]].to(h.dtype)
        return torch.exp(self.scale * log_gain * normalised)

    def _decode_nodes(self, x, mask, nodes, node_rms, h):
        dx = torch.zeros_like(x)
        for name, ids in nodes:
            dx = dx.index_copy(0, ids, self.node_dec[name](h[ids]))
        return x + self.scale * node_rms * dx * mask * self.writable

    @torch.no_grad()
    def _forward_chunked(self, graph, x, mask, nodes, node_rms, h, node_name, edge_name, const):
        """The forward pass without autograd, CHUNK_EDGES edges at a time (same result up to summation order):
        peak memory is the edge states [E, hidden] plus the output, not the dozen [E, hidden] temporaries of the
        differentiable pass (ViT-B/16: 86M edges)."""
        C = CHUNK_EDGES
        e = x.new_empty(graph.edge_index.shape[1], self.hidden)
        new_attr = graph.edge_attr.clone()
        layout = []
        for t, ids, sl, k in _edge_layout(graph):  # each type's edges are one contiguous block
            name = self._resolve("edge", edge_name(t), k)
            w = graph.edge_attr[sl].view(len(ids), k)
            rms = w.pow(2).mean().sqrt().clamp_min(_EPS)
            e0 = int(ids[0]) if len(ids) else 0
            for a in range(0, len(ids), C):
                b = min(a + C, len(ids))
                e[e0 + a:e0 + b] = self.edge_enc[name](symlog(w[a:b] / rms))
            if edge_name(t) not in const and (self.mode == "gain" or name in self.edge_dec):
                layout.append((name, e0, len(ids), k, sl, rms))
        for conv in self.convs:
            h = conv.forward_chunked_(h, e, graph.edge_index, C)
        if self.mode == "gain":
            gain = self._gains(graph, nodes, h)
            for _, e0, n, k, sl, _ in layout:
                out = new_attr[sl].view(n, k)
                for a in range(0, n, C):
                    b = min(a + C, n)
                    out[a:b] *= gain[graph.edge_index[1, e0 + a:e0 + b]].unsqueeze(1)
            return x, new_attr
        for name, e0, n, k, sl, rms in layout:
            out = new_attr[sl].view(n, k)
            for a in range(0, n, C):
                b = min(a + C, n)
                out[a:b] += self.scale * rms * self.edge_dec[name](e[e0 + a:e0 + b])
        return self._decode_nodes(x, mask, nodes, node_rms, h), new_attr

    def transform(self, graph):
        """``graph`` with the metanetwork's new features (same structure and layout)."""
        x, edge_attr = self(graph)
        return graph.with_features(x=x, edge_attr=edge_attr)
