"""The graph converter's view of torch-pruning: trace a model into ops, and find the ops of its channel groups.

The dependency graph is built by ``metaprune.depgraph.build_dependency_graph`` (the one place metaprune
builds one, with the registered custom pruners); the converter reads the neutral :class:`Trace` returned
here, never torch-pruning itself. The trace is torch-pruning's ``DependencyGraph`` (module nodes
plus functional ops such as add, cat, reshape), re-expressed as a topologically ordered list of
:class:`Op` with the output index of every input (needed for split / unbind), the shapes of every
intermediate tensor (recorded with a ``TorchFunctionMode`` during the same forward pass). On request,
:func:`compute_groups` places the groups of ``metaprune.depgraph`` (the one group type) on those ops.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..depgraph import OPTYPE, DepGraph, UnprunableOpError, build_dependency_graph
from ..layers import graph_rule_for


class GraphConversionError(ValueError):
    """A model (or one of its layers / ops) that the network <-> graph converter cannot represent."""


_KIND = {
    OPTYPE.CONV: "conv",
    OPTYPE.DEPTHWISE_CONV: "conv",
    OPTYPE.LINEAR: "linear",
    OPTYPE.BN: "norm",
    OPTYPE.LN: "norm",
    OPTYPE.GN: "norm",
    OPTYPE.IN: "norm",
    OPTYPE.EMBED: "embedding",
    OPTYPE.MHA: "mha",
    OPTYPE.PARAMETER: "parameter",
    OPTYPE.CONCAT: "concat",
    OPTYPE.SPLIT: "split",
    OPTYPE.UNBIND: "split",
    OPTYPE.SLICE: "slice",
    OPTYPE.RESHAPE: "pass",
    OPTYPE.EXPAND: "pass",
    OPTYPE.ELEMENTWISE: "elementwise",
    OPTYPE.OUTPUT: "output",
    OPTYPE.PRELU: "unsupported",
    OPTYPE.LSTM: "unsupported",  # registered graph rules (metaprune.graph.rules) make these "custom"
    OPTYPE.CUSTOMIZED: "unsupported",
}


@dataclass
class Op:
    """One traced operation: a module call, an unwrapped parameter, or a functional op."""

    id: int
    kind: str  # see _KIND values
    name: str  # module path, parameter name, or grad_fn name for functional ops
    module: object  # nn.Module, nn.Parameter, or None for functional ops
    grad_fn: object
    inputs: list = field(default_factory=list)  # [(op id, output index)]

    @property
    def op_name(self) -> str:
        return self.grad_fn.name() if hasattr(self.grad_fn, "name") else type(self.grad_fn).__name__


@dataclass
class Trace:
    ops: list  # [Op] in topological order
    shapes: dict  # (grad_fn, output_nr) -> tuple shape of that tensor
    groups: list  # [(root, units, kind, [(op id, idxs, unit of each idx)])], filled by compute_groups
    _dg: object = None
    _order: list = None
    _names: dict = None  # module -> path


class _ShapeRecorder(TorchFunctionMode):
    """Records the shape of every tensor produced with autograd history, keyed by (grad_fn, output_nr)."""

    def __init__(self):
        super().__init__()
        self.shapes = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for t in outs:
            if isinstance(t, torch.Tensor) and t.grad_fn is not None:
                self.shapes[(t.grad_fn, t.output_nr)] = tuple(t.shape)
        return out


def _drop(_):
    return None


def _call(model, example_inputs):
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def trace(model: nn.Module, example_inputs) -> Trace:
    """Trace ``model`` on ``example_inputs`` with torch-pruning; restores train/eval mode and requires_grad."""
    calls: dict = {}
    hooks = [m.register_forward_hook(lambda m, i, o: calls.__setitem__(m, calls.get(m, 0) + 1))
             for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    # where the inputs of layers with their own graph rule come from: the ops between them and the
    # layer's output belong to the layer (its rule covers them)
    fed: dict = {}

    def record_inputs(m, args, kwargs):
        fed[m] = {t.grad_fn for t in list(args) + list(kwargs.values())
                  if isinstance(t, torch.Tensor) and t.grad_fn is not None}

    hooks += [m.register_forward_pre_hook(record_inputs, with_kwargs=True)
              for m in model.modules() if graph_rule_for(m) is not None]
    recorder = _ShapeRecorder()

    def forward_fn(m, x):
        # The dependency graph reads only the structure of autograd's graph and its non-tensor saved
        # attributes (dims, sizes); dropping saved activations keeps tracing memory at a few activations.
        with recorder, torch.autograd.graph.saved_tensors_hooks(_drop, _drop):
            return _call(m, x)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dg = build_dependency_graph(model, example_inputs, forward_fn=forward_fn)
    except GraphConversionError:
        raise
    except Exception as e:  # torch-pruning's own limits (e.g. channel shuffles) end here
        raise GraphConversionError(
            f"torch-pruning could not trace {type(model).__name__}: {type(e).__name__}: {e}") from e
    finally:
        for h in hooks:
            h.remove()
    names = {m: n for n, m in model.named_modules()}
    for m, n in calls.items():
        if n > 1:
            raise GraphConversionError(
                f"module {names.get(m, '?')!r} ({type(m).__name__}) is called {n} times in one forward pass; "
                "shared weights have no single place in the graph"
            )
    param_names = {p: n for n, p in model.named_parameters()}
    tr = _from_dependency_graph(dg, names, param_names, recorder.shapes)
    _fold_custom_layers(tr, fed)
    return tr


def _fold_custom_layers(tr: Trace, fed: dict) -> None:
    """Give every layer with a registered graph rule the kind ``custom`` and its real inputs; the ops
    torch-pruning traced inside it (between its inputs and its output) become ``internal``."""
    traced = {op.module for op in tr.ops if isinstance(op.module, nn.Module)}
    lost = [type(m).__name__ for m in fed if m not in traced]
    if lost:
        raise GraphConversionError(
            f"layer type(s) {sorted(set(lost))} have a graph rule but torch-pruning traced through them as "
            "plain ops: register their pruner too (metaprune.layers.register_layer(type, pruner=...))")
    for op in tr.ops:
        if not isinstance(op.module, nn.Module) or graph_rule_for(op.module) is None:
            continue
        op.kind = "custom"
        stops = fed.get(op.module, set())
        inputs, stack, seen = [], list(op.inputs), set()
        while stack:
            src, nr = stack.pop()
            if src in seen:
                continue
            seen.add(src)
            s = tr.ops[src]
            if s.grad_fn in stops or s.kind == "custom":
                inputs.append((src, nr))
            else:
                s.kind = "internal"
                stack.extend(s.inputs)
        if stops and not inputs:
            raise GraphConversionError(f"cannot find where the inputs of layer {op.name!r} come from in the trace")
        op.inputs = inputs


def _from_dependency_graph(dg, module_names, param_names, shapes) -> Trace:
    nodes = list(dg.module2node.values())
    # topological order (iterative DFS post-order over inputs)
    order, state = [], {}
    for root in nodes:
        if root in state:
            continue
        stack = [(root, False)]
        while stack:
            n, done = stack.pop()
            if done:
                if state.get(n) != 2:
                    state[n] = 2
                    order.append(n)
                continue
            if n in state:
                continue
            state[n] = 1
            stack.append((n, True))
            for i in reversed(n.inputs):
                if i not in state:
                    stack.append((i, False))
    op_of = {n: k for k, n in enumerate(order)}
    ops = []
    for k, n in enumerate(order):
        kind = _KIND.get(n.type, "unsupported")
        mod = n.module
        if kind == "conv" and isinstance(mod, nn.modules.conv._ConvTransposeNd):
            kind = "unsupported"
        if isinstance(mod, nn.Parameter):
            name = param_names.get(mod, "<parameter>")
        elif isinstance(mod, nn.Module) and mod in module_names:
            name = module_names[mod]
        else:
            name = n.grad_fn.name() if hasattr(n.grad_fn, "name") else str(mod)
            mod = None
        ops.append(Op(k, kind, name, mod, n.grad_fn, []))
    # inputs with their output index, in the order of grad_fn.next_functions
    gf_to_node = {}
    for n in order:
        gf_to_node.setdefault(n.grad_fn, n)
    for n in order:
        op = ops[op_of[n]]
        ins = set(n.inputs)
        nexts = getattr(n.grad_fn, "next_functions", ()) or ()
        seen = set()
        for f, nr in nexts:
            src = gf_to_node.get(f)
            if src is None and f is not None and hasattr(f, "variable"):
                src = dg.module2node.get(f.variable)
            if src is not None and src in ins:
                op.inputs.append((op_of[src], nr))
                seen.add(src)
        for src in n.inputs:  # links torch-pruning made that are not direct next_functions
            if src not in seen:
                op.inputs.append((op_of[src], 0))

    tr = Trace(ops, shapes, [])
    tr._dg, tr._order, tr._names = dg, order, module_names
    return tr


def compute_groups(tr: Trace, model: nn.Module) -> list:
    """The channel groups of ``model`` as :func:`metaprune.depgraph.groups` gives them (the network's output
    layers ignored, as pruning protects them), built on the trace's own dependency graph, with the traced ops
    whose output channels each unit removes: per group ``(root, units, kind, items)``, items ``(op id, LongTensor
    idxs in that op's output, LongTensor unit of each idx)``. A channel group's ops are those of its coupled
    channels (convs, norms, residual sums, concatenations); an attention group's are the q, k, v rows of its
    head-dimension slot (the projection loses input columns: edges). Separate from :func:`trace` so a model the
    converter refuses fails before the (sometimes expensive) group expansion, and only run when graph groups are
    asked for."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dep = DepGraph(model, None, protect_outputs=True, dependency_graph=tr._dg)
    except UnprunableOpError as e:
        raise GraphConversionError(f"the channel groups of {type(model).__name__} cannot be built: {e}") from e
    op_of = {n: k for k, n in enumerate(tr._order)}
    op_of_module = {op.name: op.id for op in tr.ops if isinstance(op.module, nn.Module)}
    groups = []
    for grp in dep.groups:
        if grp.kind == "attention":
            units = torch.arange(grp.units)
            items = [(op_of_module[sl.param[:-len(".weight")]], sl.idxs, units) for sl in grp.slices
                     if sl.dim == 0 and sl.param.endswith(".weight")]
        else:
            unit_of_root = torch.empty(grp.unit_roots.numel(), dtype=torch.long)
            unit_of_root[grp.unit_roots.flatten()] = torch.arange(grp.units).repeat_interleave(grp.unit_roots.shape[1])
            items = [(op_of[d.target], targets, unit_of_root[roots]) for d, targets, roots in grp.cuts
                     if tr._dg.is_out_channel_pruning_fn(d.handler)]
        groups.append((grp.root, grp.units, grp.kind, items))
    tr.groups = groups
    return groups


def release(tr: Trace) -> None:
    """Drop the references to torch-pruning's graph and autograd's graph."""
    tr._dg = tr._order = tr._names = None
    tr.shapes = None
    for op in tr.ops:
        op.grad_fn = None
