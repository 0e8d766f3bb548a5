"""NetGraph: a network as a graph of neurons, and the layout that writes it back bit-exactly.

Representation (see the package docstring for the full contract):

* ``x`` [N, F_NODE] float32 per-neuron features in the slots of ``NODE_FEATURES``; ``x_mask`` marks
  the slots that hold a parameter or buffer element; ``node_type`` [N] ids into ``NODE_TYPES``.
* ``edge_index`` [2, E] (row 0 source / input neuron, row 1 destination / output neuron), sorted by
  ``edge_type`` [E]. Edges of one type form block ``b``: positions ``edge_block_ptr[b]:edge_block_ptr[b+1]``,
  features ``edge_attr[edge_block_attr_ptr[b]:edge_block_attr_ptr[b+1]]`` viewed as [E_b, edge_block_width[b]].
* Within a block, each layer's edges follow the memory order of its weight, so every weight is a
  zero-copy view of ``edge_attr`` (``graph_params``) and to_graph / from_graph are plain copies.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch_geometric.data import Data

from .vocab import CONSTANT_EDGE_TYPES, edge_type_name


@dataclass
class Entry:
    """Where one parameter / buffer lives in the graph.

    kind "edges": ``edge_attr[offset:offset+numel].view(shape)``; ``out_nodes`` are the neurons of axis ``out_axis``
    (None for raw parameters) and ``free_axis`` is the axis whose size follows from the surviving edges
    after nodes are removed. kind "nodes": ``x[nodes, slot]`` (``start`` set when the nodes are a
    contiguous range). kind "meta": ``value`` kept as is (non per-channel buffers like num_batches_tracked).
    """

    name: str
    kind: str
    shape: tuple
    dtype: torch.dtype
    is_buffer: bool
    requires_grad: bool = True
    offset: int = 0
    numel: int = 0
    out_nodes: torch.Tensor | None = None
    out_axis: int = 0
    free_axis: int = 1
    nodes: torch.Tensor | None = None
    slot: int = 0
    start: int | None = None
    value: torch.Tensor | None = None


def _as_range(ids: torch.Tensor):
    if ids.numel() and int(ids[-1]) - int(ids[0]) + 1 == ids.numel() and bool((ids.diff() == 1).all()):
        return int(ids[0])
    return None


class NetGraph(Data):
    """A neural network as a graph of neurons (a ``torch_geometric.data.Data``)."""

    def __getattr__(self, key):
        if key == "groups" and "_store" in self.__dict__ and "groups" not in self._store:
            raise AttributeError("this NetGraph was converted without its groups: "
                                 "to_graph(model, example_inputs, groups=True) lists them")
        return super().__getattr__(key)

    # --- typed access to the flat edge features -------------------------------------------------
    def edge_type_ids(self) -> list[int]:
        """Edge type ids present, in block order (ascending)."""
        return self.edge_block_type.tolist()

    def _block(self, t: int) -> int:
        hit = (self.edge_block_type == int(t)).nonzero()
        if hit.numel() == 0:
            raise KeyError(f"edge type {t} is not in this graph (present: {self.edge_type_ids()})")
        return int(hit[0, 0])

    def edge_slice(self, t: int) -> slice:
        """Positions (into edge_index / edge_type) of the edges of type ``t``."""
        b = self._block(t)
        return slice(int(self.edge_block_ptr[b]), int(self.edge_block_ptr[b + 1]))

    def edge_features(self, t: int) -> torch.Tensor:
        """View [E_t, k_t] of ``edge_attr`` holding the features of the edges of type ``t``."""
        b = self._block(t)
        a, z = int(self.edge_block_attr_ptr[b]), int(self.edge_block_attr_ptr[b + 1])
        return self.edge_attr[a:z].view(-1, int(self.edge_block_width[b]))

    # --- the metanetwork's output path ------------------------------------------------------------
    def with_features(self, x: torch.Tensor | None = None, edge_attr: torch.Tensor | None = None) -> "NetGraph":
        """A graph sharing this graph's structure and layout with new node / edge feature tensors."""
        if x is not None and x.shape != self.x.shape:
            raise ValueError(f"x must have shape {tuple(self.x.shape)}, got {tuple(x.shape)}")
        if edge_attr is not None and edge_attr.shape != self.edge_attr.shape:
            raise ValueError(f"edge_attr must have shape {tuple(self.edge_attr.shape)}, got {tuple(edge_attr.shape)}")
        g = NetGraph(**{k: v for k, v in self._store.items()})
        g.x = self.x if x is None else x
        g.edge_attr = self.edge_attr if edge_attr is None else edge_attr
        g._layout = self._layout
        return g

    @property
    def layout(self) -> list:
        return self._layout

    def num_parameter_elements(self) -> int:
        """Parameter elements held by the graph (x_mask slots + non-constant edge features)."""
        n = int(self.x_mask.sum())
        for b, t in enumerate(self.edge_type_ids()):
            if edge_type_name(t) not in CONSTANT_EDGE_TYPES:
                n += int(self.edge_block_attr_ptr[b + 1] - self.edge_block_attr_ptr[b])
        return n

    # --- structural pruning in graph space --------------------------------------------------------
    def remove_nodes(self, nodes: torch.Tensor) -> "NetGraph":
        """The graph without ``nodes`` and their edges, with the layout of the correspondingly pruned
        network (so ``from_graph(g.remove_nodes(ids), pruned_model)`` rebuilds it). Groups are dropped."""
        N = self.num_nodes
        keep = torch.ones(N, dtype=torch.bool)
        keep[torch.as_tensor(nodes, dtype=torch.long).flatten()] = False
        new_id = keep.cumsum(0) - 1
        ei = self.edge_index
        keep_e = keep[ei[0]] & keep[ei[1]]
        width_per_edge = torch.repeat_interleave(
            self.edge_block_width, (self.edge_block_ptr[1:] - self.edge_block_ptr[:-1]))
        keep_a = torch.repeat_interleave(keep_e, width_per_edge)
        attr_pos = keep_a.cumsum(0) - keep_a.long()  # new offset of each old feature position
        nb = len(self.edge_block_type)
        counts = torch.zeros(nb, dtype=torch.long)
        for b in range(nb):  # loop over edge types, not edges
            counts[b] = keep_e[int(self.edge_block_ptr[b]):int(self.edge_block_ptr[b + 1])].sum()
        zero = torch.zeros(1, dtype=torch.long)
        g = NetGraph(
            x=self.x[keep], x_mask=self.x_mask[keep], node_type=self.node_type[keep],
            edge_index=new_id[ei[:, keep_e]], edge_type=self.edge_type[keep_e], edge_attr=self.edge_attr[keep_a],
            edge_block_type=self.edge_block_type.clone(), edge_block_width=self.edge_block_width.clone(),
            edge_block_ptr=torch.cat([zero, counts.cumsum(0)]),
            edge_block_attr_ptr=torch.cat([zero, (counts * self.edge_block_width).cumsum(0)]),
            groups=[],
        )
        layout = []
        for e in self._layout:
            if e.kind == "edges":
                kept = int(keep_a[e.offset:e.offset + e.numel].sum())
                shape = list(e.shape)
                if e.out_nodes is not None:
                    shape[e.out_axis] = int(keep[e.out_nodes].sum())
                rest = 1
                for i, s in enumerate(shape):
                    if i != e.free_axis:
                        rest *= s
                shape[e.free_axis] = kept // rest if rest else 0
                out_nodes = None if e.out_nodes is None else new_id[e.out_nodes[keep[e.out_nodes]]]
                layout.append(replace(e, shape=tuple(shape), offset=int(attr_pos[e.offset]) if e.numel else 0,
                                      numel=kept, out_nodes=out_nodes))
            elif e.kind == "nodes":
                ids = new_id[e.nodes[keep[e.nodes]]]
                layout.append(replace(e, shape=(ids.numel(),), nodes=ids, start=_as_range(ids)))
            else:
                layout.append(e)
        g._layout = layout
        return g


def graph_params(graph: NetGraph, buffers_grad: bool = False) -> dict[str, torch.Tensor]:
    """name -> tensor for every parameter and buffer, ready for
    ``torch.func.functional_call(model, graph_params(g), x)``.

    Parameters are views of ``graph.x`` / ``graph.edge_attr`` and differentiable with respect to them.
    Buffers (running statistics) are detached copies unless ``buffers_grad``: torch's batch_norm refuses
    a running_mean that requires grad and updates the statistics in place in train mode, which must not
    write into the graph. The graph's statistics still reach the network through ``from_graph``.
    """
    x, ea = graph.x, graph.edge_attr
    out = {}
    for e in graph._layout:
        if e.kind == "edges":
            t = ea[e.offset:e.offset + e.numel].view(e.shape)
        elif e.kind == "nodes":
            if e.start is not None:
                t = x[e.start:e.start + e.shape[0], e.slot]
            else:
                t = x[e.nodes.to(x.device), e.slot]
        else:
            t = e.value.to(x.device)
        if t.dtype != e.dtype:
            t = t.to(e.dtype)
        if e.is_buffer and not buffers_grad:
            t = t.detach().clone()
        out[e.name] = t
    return out


def from_graph(graph: NetGraph, model: nn.Module) -> nn.Module:
    """A new module with the architecture of ``model`` and every parameter and buffer from ``graph``."""
    tensors = graph_params(graph)
    own = dict(model.named_parameters(remove_duplicate=False))
    own.update(dict(model.named_buffers(remove_duplicate=False)))
    missing = [k for k in own if k not in tensors and own[k] is not None]
    if missing:
        raise ValueError(f"graph has no tensor for {missing[:5]} of the model; was it made from this architecture?")
    memo = {}
    for name, t in own.items():
        if t is None or id(t) in memo:
            continue
        v = tensors[name]
        if tuple(v.shape) != tuple(t.shape):
            raise ValueError(f"graph holds {name} with shape {tuple(v.shape)}, the model has {tuple(t.shape)}")
        v = v.detach().to(t.device).clone(memory_format=torch.contiguous_format)
        memo[id(t)] = nn.Parameter(v, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else v
    out = copy.deepcopy(model, memo)
    # torch.fx's GraphModule (an imported ONNX graph) deep-copies by rebuilding itself from its code and drops
    # every attribute it does not know (metaprune_spec, the ONNX weights): carry them over
    copies = dict(out.named_modules(remove_duplicate=False))
    for name, mod in model.named_modules(remove_duplicate=False):
        new = copies.get(name)
        if new is None:
            continue
        for k, v in mod.__dict__.items():
            if k not in new.__dict__:
                new.__dict__[k] = copy.deepcopy(v, memo)
    return out
