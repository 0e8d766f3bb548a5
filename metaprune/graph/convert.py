"""to_graph: walk the traced ops in topological order and give every tensor a *channel space*.

A channel space is a LongTensor of graph node ids, one per channel of the tensor. Layers with weights
create nodes for their outputs and edges from their input space; norms put their parameters on the
nodes of the space they normalise; adds / products of different spaces and channel concatenations
create new nodes linked by constant identity edges; reshapes, activations, pooling keep the space.
Raw ``nn.Parameter`` s added or concatenated onto a space (cls token, position embeddings) become rows
of ``parameter`` nodes with one edge per (row, channel). All loops run over layers; channels and
edges are handled as tensors.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .netgraph import Entry, NetGraph, _as_range
from .trace import GraphConversionError, Trace, compute_groups, release, trace
from ..layers import graph_rule_for
from .vocab import CONSTANT_EDGE_TYPES, F_NODE, NODE_TYPE_ID, SLOT, conv_edge_type, edge_feature_size, edge_type_id


class _ParamRef:
    """A raw parameter flowing through shape ops until it meets the channel space it acts on."""

    def __init__(self, op):
        self.op = op


class _Multi:
    """Per-output spaces of a channel split."""

    def __init__(self, spaces):
        self.spaces = spaces


_PARAM_OPS = ("AddBackward", "SubBackward", "MulBackward", "DivBackward", "CatBackward", "ExpandBackward",
              "ViewBackward", "ReshapeAliasBackward", "UnsqueezeBackward", "SqueezeBackward", "PermuteBackward",
              "TransposeBackward", "CloneBackward", "ToCopyBackward")


_SHAPE_OPS = ("ViewBackward", "UnsafeViewBackward", "ExpandBackward", "ReshapeAliasBackward", "CloneBackward",
              "UnsqueezeBackward", "SqueezeBackward")


class _Builder:
    def __init__(self, model: nn.Module, tr: Trace):
        self.model, self.tr = model, tr
        self.n = 0
        self.node_chunks = []  # (count, node type id)
        self.feats = []  # (ids, slot, values)
        self.edges = []  # dicts: type, n, attr (flat tensor or None = constant 1.0), fill(ei_view), entry
        self.entries = []
        self.covered = {}  # id(tensor) -> name
        self.inputs = {}
        self.taken = torch.zeros(1024, dtype=torch.bool)  # nodes that already carry norm parameters
        self.space = {}
        self.created = {}
        self.names = {}
        for n, t in model.named_parameters(remove_duplicate=False):
            self.names.setdefault(id(t), n)
        for n, t in model.named_buffers(remove_duplicate=False):
            self.names.setdefault(id(t), n)

    # --- nodes and features -------------------------------------------------------------------
    def new_nodes(self, count: int, ntype: str) -> torch.Tensor:
        ids = torch.arange(self.n, self.n + count)
        self.n += count
        self.node_chunks.append((count, NODE_TYPE_ID[ntype]))
        if self.n > self.taken.numel():
            self.taken = torch.cat([self.taken, torch.zeros(max(self.n, self.taken.numel()), dtype=torch.bool)])
        return ids

    def _name(self, t) -> str:
        return self.names[id(t)]

    def node_feature(self, t: torch.Tensor | None, ids: torch.Tensor, slot: str, is_buffer=False):
        if t is None:
            return
        if t.dim() != 1 or t.numel() != ids.numel():
            raise GraphConversionError(
                f"{self._name(t)} has shape {tuple(t.shape)}, expected one value per channel ({ids.numel()})")
        self._check_dtype(t)
        self.feats.append((ids, SLOT[slot], t.detach()))
        self.entries.append(Entry(self._name(t), "nodes", tuple(t.shape), t.dtype, is_buffer,
                                  requires_grad=bool(getattr(t, "requires_grad", False)) if not is_buffer else False,
                                  nodes=ids, slot=SLOT[slot], start=_as_range(ids)))
        self.covered[id(t)] = self._name(t)

    def _check_dtype(self, t):
        if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise GraphConversionError(f"{self._name(t)} has dtype {t.dtype}; the graph stores float32 exactly")

    # --- edges ----------------------------------------------------------------------------------
    def dense(self, w: torch.Tensor, out_ids, in_ids, etype: str, groups: int = 1, transposed=False, param=None):
        """Edges of a weight [A=out, B=in per group, *kernel] (or [in, out] when ``transposed``)."""
        param = w if param is None else param
        self._check_dtype(param)
        if transposed:
            B, A = w.shape[0], w.shape[1]
        else:
            A, B = w.shape[0], w.shape[1]
        k = w[0, 0].numel()
        if k != edge_feature_size(etype):
            raise GraphConversionError(f"{self._name(param)}: {k} values per edge do not match edge type {etype}")

        def fill(ei):
            if transposed:
                ei[0].view(B, A).copy_(in_ids[:, None].expand(B, A))
                ei[1].view(B, A).copy_(out_ids[None, :].expand(B, A))
            elif groups == 1:
                ei[0].view(A, B).copy_(in_ids[None, :].expand(A, B))
                ei[1].view(A, B).copy_(out_ids[:, None].expand(A, B))
            else:
                base = (torch.arange(A) // (A // groups)) * B
                ei[0].view(A, B).copy_(in_ids[base[:, None] + torch.arange(B)[None, :]])
                ei[1].view(A, B).copy_(out_ids[:, None].expand(A, B))

        entry = Entry(self._name(param), "edges", tuple(param.shape), param.dtype, False,
                      requires_grad=param.requires_grad, numel=w.numel(), out_nodes=out_ids,
                      out_axis=1 if transposed else 0, free_axis=0 if transposed else 1)
        self.edges.append(dict(type=etype, n=A * B, attr=w.detach().reshape(-1), fill=fill, entry=entry))
        self.entries.append(entry)
        self.covered[id(param)] = self._name(param)

    def edges_of(self, param: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, etype: str, free_axis: int,
                 out_nodes: torch.Tensor | None = None, out_axis: int = 0):
        """One edge per ``edge_feature_size(etype)`` consecutive elements of ``param`` (memory order), from
        ``src[i]`` to ``dst[i]``. ``out_nodes`` (the neurons of axis ``out_axis``) and ``free_axis`` (the axis
        whose size follows from the surviving edges) tell ``remove_nodes`` the pruned shape."""
        self._check_dtype(param)
        k = edge_feature_size(etype)
        n = param.numel() // k
        if param.numel() != n * k or src.shape != (n,) or dst.shape != (n,):
            raise GraphConversionError(
                f"{self._name(param)}: {param.numel()} values as {etype} edges of {k} need {n} sources and "
                f"destinations, got {tuple(src.shape)} and {tuple(dst.shape)}")

        def fill(ei):
            ei[0].copy_(src)
            ei[1].copy_(dst)

        entry = Entry(self._name(param), "edges", tuple(param.shape), param.dtype, False,
                      requires_grad=param.requires_grad, numel=param.numel(), out_nodes=out_nodes,
                      out_axis=out_axis, free_axis=free_axis)
        self.edges.append(dict(type=etype, n=n, attr=param.detach().reshape(-1), fill=fill, entry=entry))
        self.entries.append(entry)
        self.covered[id(param)] = self._name(param)

    def identity(self, src, dst, etype: str):
        def fill(ei):
            ei[0].copy_(src)
            ei[1].copy_(dst)
        self.edges.append(dict(type=etype, n=src.numel(), attr=None, fill=fill, entry=None))

    def attach_param(self, ref: _ParamRef, space: torch.Tensor, where: str):
        p = ref.op.module
        name = self._name(p)
        if id(p) in self.covered:
            raise GraphConversionError(f"parameter {name!r} is used more than once ({where})")
        C = space.numel()
        axes = [i for i, s in enumerate(p.shape) if s == C]
        if not axes:
            raise GraphConversionError(
                f"parameter {name!r} of shape {tuple(p.shape)} meets a {C}-channel tensor in op {where}; "
                "it has no axis of that size")
        self._check_dtype(p)
        ax = axes[-1]
        pre, post = math.prod(p.shape[:ax]), math.prod(p.shape[ax + 1:])
        rows = self.new_nodes(pre * post, "parameter")

        def fill(ei):
            f = torch.arange(p.numel())
            c = (f // post) % C
            r = (f // (C * post)) * post + f % post
            ei[0].copy_(rows[r])
            ei[1].copy_(space[c])

        entry = Entry(name, "edges", tuple(p.shape), p.dtype, False, requires_grad=p.requires_grad,
                      numel=p.numel(), out_nodes=None, free_axis=ax)
        self.edges.append(dict(type="parameter", n=p.numel(), attr=p.detach().reshape(-1), fill=fill, entry=entry))
        self.entries.append(entry)
        self.covered[id(p)] = name

    # --- spaces ---------------------------------------------------------------------------------
    def input_space(self, channels: int) -> torch.Tensor:
        if channels not in self.inputs:
            self.inputs[channels] = self.new_nodes(channels, "input")
        return self.inputs[channels]

    def in_values(self, op):
        vals = []
        for src, nr in op.inputs:
            v = self.space.get(src)
            if isinstance(v, _Multi):
                v = v.spaces[nr] if nr < len(v.spaces) else None
            vals.append(v)
        return vals

    @staticmethod
    def distinct(spaces):
        out = []
        for s in spaces:
            if not any(s is o or (s.numel() == o.numel() and torch.equal(s, o)) for o in out):
                out.append(s)
        return out

    def one_space(self, op, what: str):
        vals = self.in_values(op)
        for v in vals:
            if isinstance(v, _ParamRef):
                raise GraphConversionError(
                    f"parameter {self._name(v.op.module)!r} is used as an input of {what} {op.name!r}; unsupported")
        real = self.distinct([v for v in vals if isinstance(v, torch.Tensor)])
        if len(real) > 1:
            raise GraphConversionError(f"{what} {op.name!r} reads {len(real)} different tensors; unsupported")
        return real[0] if real else None

    # --- ops ------------------------------------------------------------------------------------
    def run(self):
        for op in self.tr.ops:
            handler = getattr(self, "op_" + op.kind, None)
            if handler is None:
                mod = op.module
                raise GraphConversionError(
                    f"layer {op.name!r} ({type(mod).__name__ if mod is not None else op.op_name}) is not supported "
                    "by the network <-> graph converter")
            handler(op)
        self.check_coverage()

    def op_output(self, op):
        self.space[op.id] = None

    def op_parameter(self, op):
        self.space[op.id] = _ParamRef(op)

    def op_conv(self, op):
        m = op.module
        S = self.one_space(op, "conv")
        if S is None:
            S = self.input_space(m.in_channels)
        if S.numel() != m.in_channels:
            raise GraphConversionError(
                f"conv {op.name!r} expects {m.in_channels} input channels but its input carries {S.numel()} "
                "(an op before it changes channels in a way the converter does not follow)")
        dw = m.groups > 1 and m.groups == m.in_channels
        out = self.new_nodes(m.out_channels, "depthwise_conv" if dw else "conv")
        self.dense(m.weight, out, S, conv_edge_type(m.kernel_size), groups=m.groups)
        self.node_feature(m.bias, out, "bias")
        self.space[op.id] = out
        self.created[op.id] = out[:, None]

    def op_linear(self, op):
        m = op.module
        S = self.one_space(op, "linear")
        if S is None:
            S = self.input_space(m.in_features)
        L = S.numel()
        if m.in_features == L:
            etype, w = "linear", m.weight
        elif m.in_features % L == 0:
            etype = f"linear_{m.in_features // L}"
            w = m.weight
        else:
            raise GraphConversionError(
                f"linear {op.name!r} expects {m.in_features} input features but its input carries {L} channels "
                "(an op before it changes channels in a way the converter does not follow)")
        out = self.new_nodes(m.out_features, "linear")
        if etype == "linear":
            self.dense(w, out, S, etype)
        else:
            self._dense_flat(w, out, S, etype, m.in_features // L)
        self.node_feature(m.bias, out, "bias")
        self.space[op.id] = out
        self.created[op.id] = out[:, None]

    def _dense_flat(self, w, out, S, etype, s):
        # weight [O, C*s]: edge (c -> o) carries w[o, c*s:(c+1)*s]; same memory order as [O, C, s]
        self.dense(w.view(w.shape[0], S.numel(), s), out, S, etype, param=w)

    def op_norm(self, op):
        m = op.module
        S = self.one_space(op, "norm")
        C = getattr(m, "num_features", None) or getattr(m, "num_channels", None)
        if isinstance(m, nn.LayerNorm):
            if len(m.normalized_shape) != 1:
                raise GraphConversionError(
                    f"LayerNorm {op.name!r} normalises over {tuple(m.normalized_shape)}; "
                    "only one channel axis is supported")
            C = m.normalized_shape[0]
        if S is None:
            S = self.input_space(C)
        if S.numel() != C:
            raise GraphConversionError(f"norm {op.name!r} has {C} channels but its input carries {S.numel()}")
        if bool(self.taken[S].any()):
            new = self.new_nodes(C, "norm")
            self.identity(S, new, "identity")
            self.created[op.id] = new[:, None]
            S = new
        self.taken[S] = True
        self.node_feature(getattr(m, "weight", None), S, "norm_weight")
        self.node_feature(getattr(m, "bias", None), S, "norm_bias")
        self.node_feature(getattr(m, "running_mean", None), S, "running_mean", is_buffer=True)
        self.node_feature(getattr(m, "running_var", None), S, "running_var", is_buffer=True)
        self.space[op.id] = S

    def op_embedding(self, op):
        m = op.module
        rows = self.new_nodes(m.num_embeddings, "embedding_input")
        out = self.new_nodes(m.embedding_dim, "embedding")
        self.dense(m.weight, out, rows, "embedding", transposed=True)
        self.space[op.id] = out
        self.created[op.id] = out[:, None]

    def op_mha(self, op):
        m = op.module
        if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
            raise GraphConversionError(
                f"MultiheadAttention {op.name!r} with separate q/k/v dims, bias_k/bias_v or add_zero_attn "
                "is not supported")
        S = self.one_space(op, "attention")
        E = m.embed_dim
        if S is None:
            S = self.input_space(E)
        if S.numel() != E:
            raise GraphConversionError(f"attention {op.name!r} has width {E} but its input carries {S.numel()}")
        qkv = self.new_nodes(3 * E, "attention_qkv")
        self.dense(m.in_proj_weight, qkv, S, "linear")
        self.node_feature(m.in_proj_bias, qkv, "bias")
        out = self.new_nodes(E, "attention_out")
        self.dense(m.out_proj.weight, out, qkv[2 * E:], "linear")
        self.node_feature(m.out_proj.bias, out, "bias")
        self.space[op.id] = out
        self.created[op.id] = torch.stack([out, qkv[:E], qkv[E:2 * E], qkv[2 * E:]], 1)

    def op_custom(self, op):
        """A layer type with a registered NetGraph rule (``metaprune.layers.register_layer``)."""
        m = op.module
        rule = graph_rule_for(m)
        layer = LayerGraph(self, op, self.one_space(op, type(m).__name__))
        try:
            result = rule(m, layer)
        except GraphConversionError:
            raise
        except Exception as e:
            raise GraphConversionError(
                f"the graph rule of {type(m).__name__} failed on layer {op.name!r}: {type(e).__name__}: {e}") from e
        if not (isinstance(result, tuple) and len(result) == 2):
            raise GraphConversionError(f"the graph rule of {type(m).__name__} must return (output nodes, "
                                       f"nodes per output channel), got {type(result).__name__}")
        out, channels = result
        missing = [n for n, p in m.named_parameters() if id(p) not in self.covered]
        if missing:
            raise GraphConversionError(
                f"the graph rule of {type(m).__name__} left parameter(s) {missing} of layer {op.name!r} unplaced")
        self.space[op.id] = out
        self.created[op.id] = channels if channels.dim() == 2 else channels[:, None]

    def op_internal(self, op):
        self.space[op.id] = None  # an op inside a layer with its own graph rule: the rule covers it

    def op_pass(self, op):
        vals = [v for v in self.in_values(op) if v is not None]
        self.space[op.id] = vals[0] if vals else None

    def _shape_of(self, fn_nr):
        return self.tr.shapes.get(fn_nr)

    def op_concat(self, op):
        vals = self.in_values(op)
        gf = op.grad_fn
        dim = getattr(gf, "_saved_dim", None)
        shapes = [self._shape_of(fn) for fn in gf.next_functions]
        channelwise = dim is not None and all(isinstance(v, torch.Tensor) for v in vals) and len(vals) == len(shapes) \
            and all(s is not None and len(s) > dim and s[dim] == v.numel() for s, v in zip(shapes, vals))
        if channelwise and len(vals) > 1:
            out = self.new_nodes(sum(v.numel() for v in vals), "concat")
            self.identity(torch.cat(vals), out, "concat")
            self.space[op.id] = out
            self.created[op.id] = out[:, None]
        else:
            self.merge(op, vals, "concat")

    def op_split(self, op):
        S = self.one_space(op, "split")
        gf = op.grad_fn
        dim = getattr(gf, "_saved_dim", None)
        sizes = getattr(gf, "_saved_self_sym_sizes", None)
        if sizes is None and gf.next_functions:
            sizes = self._shape_of(gf.next_functions[0])
        if S is None or dim is None or sizes is None or sizes[dim] != S.numel():
            self.space[op.id] = S  # a split along another axis keeps the channels
            return
        if hasattr(gf, "_saved_split_sizes"):
            parts = list(gf._saved_split_sizes)
        elif hasattr(gf, "_saved_split_size"):
            k = gf._saved_split_size
            parts = [min(k, S.numel() - i) for i in range(0, S.numel(), k)]
        else:  # unbind over channels
            parts = [1] * S.numel()
        self.space[op.id] = _Multi(list(torch.split(S, parts)))

    def op_slice(self, op):
        S = self.one_space(op, "slice")
        gf = op.grad_fn
        sizes = getattr(gf, "_saved_self_sym_sizes", None)
        dim = getattr(gf, "_saved_dim", None)
        if S is not None and sizes is not None and dim is not None and dim < len(sizes) and sizes[dim] == S.numel():
            S = S[gf._saved_start:min(gf._saved_end, S.numel()):gf._saved_step]
        self.space[op.id] = S

    def op_elementwise(self, op):
        name = op.op_name
        if "ScaledDotProduct" in name:
            return self.attention(op, 2)
        vals = self.in_values(op)
        if name.startswith(("BmmBackward", "MmBackward", "MatmulBackward")) and len(vals) == 2 \
                and all(isinstance(v, torch.Tensor) for v in vals):
            return self.attention(op, 1)  # a @ b has the channels of b (scores @ values)
        params = [v for v in vals if isinstance(v, _ParamRef)]
        if params and not name.startswith(_PARAM_OPS):
            raise GraphConversionError(
                f"parameter {self._name(params[0].op.module)!r} is used by op {name}, which the graph converter "
                "cannot represent (raw parameters may only be added, multiplied or concatenated onto activations)")
        real = self.distinct([v for v in vals if isinstance(v, torch.Tensor)])
        if name.startswith("SelectBackward") and len(real) == 1:
            gf = op.grad_fn
            sizes, dim, C = gf._saved_self_sym_sizes, gf._saved_dim % len(gf._saved_self_sym_sizes), real[0].numel()
            # picks one channel, unless another axis has the channel count too ([B, T, C] with T == C: an LSTM's
            # last step, a token): selecting one channel is rare, picking a position is common
            if sizes[dim] == C and not any(s == C for i, s in enumerate(sizes) if i not in (0, dim)):
                raise GraphConversionError(f"op {name} selects a single channel; unsupported")
        if not real:
            self.space[op.id] = params[0] if len(params) == 1 and len(vals) == 1 else None
            return
        self.merge(op, vals, "residual" if name.startswith(("AddBackward", "SubBackward")) else "product")

    def merge(self, op, vals, kind):
        params = [v for v in vals if isinstance(v, _ParamRef)]
        real = self.distinct([v for v in vals if isinstance(v, torch.Tensor)])
        if not real:
            self.space[op.id] = None
            return
        if len(real) == 1:
            S = real[0]
        else:
            C = real[0].numel()
            if any(r.numel() != C for r in real):
                raise GraphConversionError(
                    f"op {op.op_name} combines tensors of {[r.numel() for r in real]} channels; unsupported")
            S = self.new_nodes(C, kind)
            self.identity(torch.cat(real), S.repeat(len(real)), kind)
            self.created[op.id] = S[:, None]
        for p in params:
            self.attach_param(p, S, op.op_name)
        self.space[op.id] = S

    def attention(self, op, value: int):
        """Attention (fused, or scores @ values): the output channels are those of the value operand
        ``value``; when q, k, v are packed in one projection and picked by select / unbind, only the
        picked third of its channels."""
        gf = op.grad_fn
        vfn, vnr = gf.next_functions[value]
        v_op = next((src for src, nr in op.inputs if self.tr.ops[src].grad_fn is vfn), None)
        S = self.space.get(v_op) if v_op is not None else None
        if isinstance(S, _Multi):
            S = S.spaces[vnr]
        if not isinstance(S, torch.Tensor):
            raise GraphConversionError(f"attention op {op.op_name}: cannot find the channels of its value input")
        fn, nr = vfn, vnr
        while fn is not None and fn.name().startswith(_SHAPE_OPS):  # matmul wraps operands in expand / view
            fn, nr = fn.next_functions[0]
        vfn, vnr = fn, nr
        name = vfn.name() if vfn is not None else ""
        count = index = None
        if name.startswith("SelectBackward"):
            count, index = vfn._saved_self_sym_sizes[vfn._saved_dim], vfn._saved_index
        elif name.startswith("UnbindBackward"):
            shp = self._shape_of(vfn.next_functions[0])
            if shp is not None:
                count, index = shp[vfn._saved_dim], vnr
        if count and count > 1 and S.numel() % count == 0 and index is not None:
            E = S.numel() // count  # q, k, v packed along the channel axis of one projection
            S = S[index * E:(index + 1) * E]
        self.space[op.id] = S

    # --- coverage -------------------------------------------------------------------------------
    def check_coverage(self):
        missing = [n for n, p in self.model.named_parameters() if id(p) not in self.covered]
        if missing:
            raise GraphConversionError(
                f"parameter(s) {missing[:5]} are not used by any op the graph converter understands "
                "(unsupported layer or op, or unused parameter)")
        for n, b in self.model.named_buffers():
            if id(b) not in self.covered:
                self.entries.append(Entry(n, "meta", tuple(b.shape), b.dtype, True, requires_grad=False,
                                          value=b.detach().clone()))
                self.covered[id(b)] = n

    # --- assembly -------------------------------------------------------------------------------
    def assemble(self, groups: bool = False) -> NetGraph:
        N = self.n
        node_type = torch.repeat_interleave(
            torch.tensor([t for _, t in self.node_chunks], dtype=torch.long),
            torch.tensor([c for c, _ in self.node_chunks], dtype=torch.long)) if self.node_chunks \
            else torch.zeros(0, dtype=torch.long)
        x = torch.zeros(N, F_NODE, dtype=torch.float32)
        x_mask = torch.zeros(N, F_NODE, dtype=torch.bool)
        for ids, slot, vals in self.feats:
            x[ids, slot] = vals.to("cpu", torch.float32)  # graphs are built on the CPU; .to(device) after
            x_mask[ids, slot] = True

        tids = [edge_type_id(c["type"]) for c in self.edges]
        order = sorted(range(len(self.edges)), key=lambda i: tids[i])  # stable: layers keep their order
        E = sum(c["n"] for c in self.edges)
        widths = [edge_feature_size(c["type"]) for c in self.edges]
        A = sum(c["n"] * w for c, w in zip(self.edges, widths))
        edge_index = torch.empty(2, E, dtype=torch.long)
        edge_type = torch.empty(E, dtype=torch.long)
        edge_attr = torch.empty(A, dtype=torch.float32)
        btypes, bptr, baptr, bwidth = [], [0], [0], []
        e0 = a0 = 0
        for i in order:
            c, t, w = self.edges[i], tids[i], widths[i]
            n = c["n"]
            if not btypes or btypes[-1] != t:
                if btypes:
                    bptr.append(e0)
                    baptr.append(a0)
                btypes.append(t)
                bwidth.append(w)
            c["fill"](edge_index[:, e0:e0 + n])
            edge_type[e0:e0 + n] = t
            if c["attr"] is None:
                edge_attr[a0:a0 + n * w] = 1.0
            else:
                edge_attr[a0:a0 + n * w] = c["attr"]
            if c["entry"] is not None:
                c["entry"].offset = a0
            e0 += n
            a0 += n * w
        bptr.append(e0)
        baptr.append(a0)

        g = NetGraph(
            x=x, x_mask=x_mask, node_type=node_type, edge_index=edge_index, edge_type=edge_type,
            edge_attr=edge_attr,
            edge_block_type=torch.tensor(btypes, dtype=torch.long),
            edge_block_ptr=torch.tensor(bptr if btypes else [0], dtype=torch.long),
            edge_block_attr_ptr=torch.tensor(baptr if btypes else [0], dtype=torch.long),
            edge_block_width=torch.tensor(bwidth, dtype=torch.long),
            groups=self.groups() if groups else None,
        )
        g._layout = self.entries
        return g

    def groups(self) -> list:
        """Per channel group (``metaprune.depgraph.groups``): LongTensor [units, m] of the nodes unit c removes."""
        out = []
        for root, size, kind, items in self.tr.groups:
            rows, cols = [], []
            for op, idxs, unit_ids in items:
                made = self.created.get(op)
                if made is None:
                    continue
                if idxs.numel() and int(idxs.max()) >= made.shape[0]:
                    raise GraphConversionError(
                        f"DepGraph group rooted at {root!r} addresses channel {int(idxs.max())} of "
                        f"{self.tr.ops[op].name!r}, which has {made.shape[0]}")
                nodes = made[idxs]  # [k, m]
                rows.append(unit_ids[:, None].expand_as(nodes).reshape(-1))
                cols.append(nodes.reshape(-1))
            if not rows:
                continue
            r, c = torch.cat(rows), torch.cat(cols)
            key = torch.unique(r * self.n + c)
            r, c = key // self.n, key % self.n
            counts = torch.bincount(r, minlength=size)
            m = int(counts.max())
            table = torch.full((size, m), -1, dtype=torch.long)
            pos = torch.arange(r.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
            table[r, pos] = c
            out.append(NodeGroup(root, table, kind))
        return out


class LayerGraph:
    """What a NetGraph rule of a custom layer type sees: the layer's input neurons and the means to add
    nodes, weight edges, per-neuron features and constant edges. Parameter names are relative to the layer.

    A rule ``rule(layer, g) -> (out, channels)`` returns the neurons of the layer's output (LongTensor
    [C_out]) and, for each output channel as the layer's pruner counts them, the nodes that removing it
    removes (LongTensor [C_out, m], or [C_out] when one node each). See ``metaprune.graph.rules``.
    """

    def __init__(self, builder: _Builder, op, space):
        self._b, self._op, self.input = builder, op, space

    @property
    def name(self) -> str:
        return self._op.name

    def input_nodes(self, channels: int) -> torch.Tensor:
        """The neurons of the layer's input: those of the op feeding it, or network input channels."""
        if self.input is None:
            return self._b.input_space(channels)
        if self.input.numel() != channels:
            raise GraphConversionError(f"layer {self.name!r} expects {channels} input channels but its input "
                                       f"carries {self.input.numel()}")
        return self.input

    def nodes(self, count: int, node_type: str) -> torch.Tensor:
        """``count`` new neurons of ``node_type`` (a name in ``NODE_TYPES``); returns their ids."""
        if node_type not in NODE_TYPE_ID:
            raise GraphConversionError(f"layer {self.name!r}: node type {node_type!r} is not in NODE_TYPES")
        return self._b.new_nodes(count, node_type)

    def _param(self, name: str) -> torch.Tensor:
        return self._op.module.get_parameter(name)

    def weight(self, name: str, out: torch.Tensor, inp: torch.Tensor, edge_type: str, groups: int = 1,
               transposed: bool = False) -> None:
        """Dense edges of a weight [out, in / groups, *kernel] (``transposed``: [in, out]) from ``inp`` to ``out``."""
        self._b.dense(self._param(name), out, inp, edge_type, groups=groups, transposed=transposed)

    def edges(self, name: str, src: torch.Tensor, dst: torch.Tensor, edge_type: str, free_axis: int,
              out_nodes: torch.Tensor | None = None, out_axis: int = 0) -> None:
        """Edge ``i`` from ``src[i]`` to ``dst[i]`` carries the i-th ``edge_feature_size(edge_type)`` elements of
        the parameter in memory order (see ``_Builder.edges_of`` for ``free_axis`` / ``out_nodes``)."""
        self._b.edges_of(self._param(name), src, dst, edge_type, free_axis, out_nodes, out_axis)

    def feature(self, name: str, nodes: torch.Tensor, slot: str) -> None:
        """A per-neuron parameter (one value per node of ``nodes``) in node feature ``slot`` (``NODE_FEATURES``)."""
        if slot not in SLOT:
            raise GraphConversionError(f"layer {self.name!r}: {slot!r} is not a node feature slot {list(SLOT)}")
        self._b.node_feature(self._param(name), nodes, slot)

    def constant(self, src: torch.Tensor, dst: torch.Tensor, edge_type: str) -> None:
        """Edges that carry no parameter (a fixed wiring such as a sum or a mean); ``edge_type`` must be in
        ``CONSTANT_EDGE_TYPES``."""
        if edge_type not in CONSTANT_EDGE_TYPES:
            raise GraphConversionError(f"layer {self.name!r}: {edge_type!r} is not a constant edge type")
        self._b.identity(src, dst, edge_type)


class NodeGroup:
    """The graph view of one :class:`metaprune.depgraph.Group` (same ``root``, ``kind`` and unit count):
    ``nodes[c]`` are the graph nodes removed with unit c of the group (padded with -1 when units remove
    different numbers of nodes). Removing them is what ``DepGraph.apply`` does to the network."""

    def __init__(self, root: str, nodes: torch.Tensor, kind: str = "channel"):
        self.root, self.nodes, self.kind = root, nodes, kind

    def __len__(self):
        return self.nodes.shape[0]

    def node_ids(self, channels=None) -> torch.Tensor:
        t = self.nodes if channels is None else self.nodes[torch.as_tensor(channels, dtype=torch.long)]
        return t[t >= 0]

    def __repr__(self):
        return (f"NodeGroup(root={self.root!r}, kind={self.kind!r}, units={self.nodes.shape[0]}, "
                f"nodes_per_unit={self.nodes.shape[1]})")


def to_graph(model: nn.Module, example_inputs, groups: bool = False) -> NetGraph:
    """Convert ``model`` (traced on ``example_inputs``) to a :class:`NetGraph`.

    ``groups``: also list the channel groups of ``metaprune.depgraph.groups`` (the network's output layers
    ignored, as pruning protects them) as :class:`NodeGroup` (``graph.groups``; without it the graph has no
    ``groups``). They take a large share of the conversion time and only graph-space pruning reads them.
    Raises :class:`GraphConversionError` naming the module path and op for anything it cannot represent.
    """
    tr = trace(model, example_inputs)
    b = _Builder(model, tr)
    b.run()
    if groups:
        compute_groups(tr, model)
    release(tr)  # free autograd's graph before the big allocations
    return b.assemble(groups)
