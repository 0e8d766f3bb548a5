"""Channel groups of a network: the one module that wraps torch-pruning's DependencyGraph.

A *group* is a set of coupled channels that must be removed together (a residual stream, a conv with
its BatchNorm and the next layer's input, a ViT head dimension across q, k, v and the projection).
Each group has ``units`` channel units; removing unit ``c`` removes, for every coupled parameter, the
entries listed by the group's slices::

    for s in group.slices:            # s.param: "layer1.0.conv1.weight", s.dim: 0, s.idxs: LongTensor[units]
        params[s.param].index_select(s.dim, s.idxs[c:c + 1])

so the group-L2 norm of unit ``c`` is
``sqrt(sum(params[s.param].index_select(s.dim, s.idxs[c:c+1]).pow(2).sum() for s in group.slices))``
(``group_norms`` computes it for all units at once, differentiably). A parameter that holds several entries
per unit (a Linear after ``flatten``, q/k/v rows of one attention head dimension) appears in several
slices with the same name and dim.

Nothing else in metaprune imports torch-pruning: the names the rest builds on (custom pruner base, op
kinds, its importance and pruner classes, its op counter) are re-exported here. Importance criteria receive
the ``Group`` (its ``tp_group`` is the torch-pruning group for criteria that torch-pruning implements), and
pruning goes through ``DepGraph.apply``.

Layer types torch-pruning has no rule for are pruned by the custom pruners registered with
``metaprune.layers.register_layer`` (plus any passed as ``customized_pruners``): they become group roots, their
``param_slices(layer, out)`` lists the entries one channel owns, and ``apply`` cuts them through the pruner.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning.pruner import function as tpf

from .layers import check_pruner, custom_pruners
from .layers import register_layer_by_name as _register_by_name
from .utils import preserve_mode

# torch-pruning's public names the rest of metaprune builds on (nothing else imports torch_pruning)
OPTYPE = tp.ops.OPTYPE  # op kinds of a traced node (the graph converter reads them)
BasePruningFunc = tpf.BasePruningFunc  # base class of custom pruners (LSTM, GATConv, user layers)


def kept_indices(n: int, idxs) -> torch.Tensor:
    """The indices of ``range(n)`` a custom pruner keeps when it removes ``idxs`` (sorted)."""
    mask = torch.ones(n, dtype=torch.bool)
    mask[torch.as_tensor(list(idxs), dtype=torch.long)] = False
    return mask.nonzero().flatten()
prune_conv_in_channels, prune_linear_in_channels = tpf.prune_conv_in_channels, tpf.prune_linear_in_channels
TPImportance = tp.importance.Importance  # base class of criteria torch-pruning's own pruners accept
GroupMagnitudeImportance = tp.importance.GroupMagnitudeImportance
GroupTaylorImportance = tp.importance.GroupTaylorImportance
MetaPruner, GroupNormPruner = tp.pruner.MetaPruner, tp.pruner.GroupNormPruner
MODULES_MAPPING = tp.utils.op_counter.MODULES_MAPPING  # layer types its op counter counts
count_ops_and_params = tp.utils.count_ops_and_params

ROOT_TYPES = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)


class UnprunableOpError(ValueError):
    """The network holds a layer with parameters that the pruner has no rule for."""


class TraceTimeoutError(RuntimeError):
    """Tracing a network's dependency graph or expanding its groups ran past ``TRACE_TIME_LIMIT_S``."""


# seconds torch-pruning may spend tracing one network, or expanding its groups (None: no bound); a network whose
# graph takes longer (a recurrent model unrolled over thousands of steps, a huge DenseNet) fails with one sentence
TRACE_TIME_LIMIT_S: float | None = 600.0


@contextlib.contextmanager
def time_bound(what: str, seconds: float | None = None):
    """Raise :class:`TraceTimeoutError` naming ``what`` if the block runs past ``seconds`` (default
    ``TRACE_TIME_LIMIT_S``). Bounded only in the main thread with no other SIGALRM user (elsewhere it just runs)."""
    seconds = TRACE_TIME_LIMIT_S if seconds is None else seconds
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
              and signal.getitimer(signal.ITIMER_REAL)[0] == 0)
    if not usable:
        yield
        return

    def expire(signum, frame):
        raise TraceTimeoutError(f"{what} took longer than {seconds:g} s; prune a smaller input or list the "
                                "slow part in prune.ignored_layers (metaprune.depgraph.TRACE_TIME_LIMIT_S sets the bound)")

    signal.signal(signal.SIGALRM, expire)
    # fires again until the block ends: torch-pruning's tracer retries a failed forward under a bare except
    signal.setitimer(signal.ITIMER_REAL, seconds, min(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


@dataclass
class Slice:
    """Entries of one parameter removed with each channel unit: ``param.index_select(dim, idxs[c])``."""

    param: str
    dim: int
    idxs: torch.Tensor  # LongTensor[units]


@dataclass
class Group:
    """Coupled channels removed together.

    ``root``: module whose output channels define the group; ``units``: number of channel units;
    ``slices``: every coupled parameter entry (see the module docstring); ``kind``: ``channel`` or
    ``attention`` (a head dimension of an attention, see :class:`Heads`); ``multiple``: kept units must be a
    multiple of this (``nn.MultiheadAttention``'s heads); ``custom``: a coupled layer is pruned by a custom
    pruner (criteria then score the slices, which torch-pruning's own criteria do not see); ``partial``:
    ``(param, dim, entries per unit)`` of parameters only some units own (an input split among branches, each unit
    reaching one of them: timm's MixedConv2d, InceptionNeXt), which no slice can hold; they are cut with the group,
    criteria do not score them, and the cost model counts their entries per removed unit on average.
    """

    root: str
    units: int
    slices: list[Slice]
    kind: str = "channel"
    multiple: int = 1
    custom: bool = False
    unit_roots: torch.Tensor | None = field(default=None, repr=False)  # [units, k] root channel ids
    tp_group: object = field(default=None, repr=False)
    attention: Heads | None = field(default=None, repr=False)
    cuts: list = field(default_factory=list, repr=False)  # (dependency, target idxs, root idxs), frozen copies
    partial: list = field(default_factory=list)  # (param, dim, entries per unit on average)

    def norms(self, params: dict[str, torch.Tensor], p: int = 2) -> torch.Tensor:
        return group_norms(self, params, p)


def group_norms(group: Group, params: dict[str, torch.Tensor], p: int = 2) -> torch.Tensor:
    """Per-unit group norm ``(sum over slices |w|^p)^(1/p)`` of ``group`` on a name->tensor dict (differentiable)."""
    total = None
    for s in group.slices:
        w = params[s.param]
        sel = w.index_select(s.dim, s.idxs.to(w.device)).movedim(s.dim, 0)
        part = sel.abs().pow(p).reshape(group.units, -1).sum(1)
        total = part if total is None else total + part
    return total.pow(1.0 / p)


@dataclass
class Heads:
    """A multi-head attention whose heads metaprune prunes, one unit at a time.

    ``outs``: ``(layer, blocks, heads)``: the layer's output rows are ``blocks`` stacked ``[heads x head_dim]`` blocks
    (a fused qkv: 3 blocks of ``heads``; separate query/key/value: 1 each, keys and values with ``kv_heads`` under
    grouped-query attention); ``proj``: the layer reading the query heads' outputs as input columns; ``module``: the
    attention module whose width attributes follow. Layers are ``nn.Linear`` or a registered custom layer (GPT-2's
    ``Conv1D``). ``unit``: ``dim`` removes slot ``d`` of every head (the head dim shrinks; the scale stays, pruning
    must not change the attention temperature); ``head`` removes one key/value head with the query heads sharing it
    (whole heads: where a rotary embedding pairs the dims of a head, or keys and values have fewer heads, and
    wherever ``attention_unit="head"`` asks for them)."""

    module: nn.Module
    outs: list
    proj: nn.Module
    heads: int
    head_dim: int
    kv_heads: int
    unit: str = "dim"

    @property
    def units(self) -> int:
        return self.head_dim if self.unit == "dim" else self.kv_heads

    def rows(self, heads: int, units: torch.Tensor) -> torch.Tensor:
        """Indices, in a ``[heads x head_dim]`` block, of the entries ``units`` own (sorted)."""
        units = torch.as_tensor(units, dtype=torch.long).flatten()
        hd = self.head_dim
        if self.unit == "dim":
            idx = torch.arange(heads)[:, None] * hd + units[None, :]
        else:  # key/value head g: query heads g*r .. g*r + r - 1 of a block of heads = r * kv_heads
            r = heads // self.kv_heads
            head = (units[:, None] * r + torch.arange(r)[None, :]).flatten()
            idx = head[:, None] * hd + torch.arange(hd)[None, :]
        return idx.flatten().sort().values

    def cut(self, units: torch.Tensor, pruners: dict) -> None:
        """Remove ``units`` from every projection, then update the counts and the module's width attributes."""
        for lin, blocks, heads in self.outs:
            width = heads * self.head_dim
            rows = torch.cat([b * width + self.rows(heads, units) for b in range(blocks)])
            _cut(lin, rows.tolist(), True, pruners)
        _cut(self.proj, self.rows(self.heads, units).tolist(), False, pruners)
        n = len(units)
        if self.unit == "dim":
            self.head_dim -= n
        else:
            self.heads -= n * (self.heads // self.kv_heads)
            self.outs = [(lin, b, h - n * (h // self.kv_heads)) for lin, b, h in self.outs]
            self.kv_heads -= n
        self.sync()

    def sync(self) -> None:
        """Width attributes read in ``forward``: timm's ``head_dim``/``attn_dim``/``num_heads``, Hugging Face's
        ``attention_head_size``/``all_head_size``/``num_attention_heads``/``num_key_value_heads``, GPT-2's
        ``split_size`` (the width of each of q, k, v)."""
        m, width = self.module, self.head_dim * self.heads
        _set_ints(m, ("head_dim", "attention_head_size"), self.head_dim)
        _set_ints(m, ("attn_dim", "all_head_size", "split_size"), width)
        _set_ints(m, ("num_heads", "num_attention_heads"), self.heads)
        _set_ints(m, ("num_key_value_heads",), self.kv_heads)


def _width(layer: nn.Module, out: bool, pruners: dict) -> int | None:
    """Output (``out``) or input width of a Linear or a layer with a custom pruner."""
    if isinstance(layer, nn.Linear):
        return layer.out_features if out else layer.in_features
    pruner = pruners.get(type(layer))
    if pruner is None:
        return None
    return pruner.get_out_channels(layer) if out else pruner.get_in_channels(layer)


def _cut(layer: nn.Module, idxs: list, out: bool, pruners: dict) -> None:
    if isinstance(layer, nn.Linear):
        (tpf.prune_linear_out_channels if out else tpf.prune_linear_in_channels)(layer, idxs)
    else:
        pruner = pruners[type(layer)]
        (pruner.prune_out_channels if out else pruner.prune_in_channels)(layer, idxs)


def _layer_slices(name: str, layer: nn.Module, out: bool, idxs: torch.Tensor, pruners: dict) -> list[Slice]:
    """The parameter entries of output rows (``out``) or input columns ``idxs`` of a Linear or custom layer."""
    if isinstance(layer, nn.Linear):
        spec = [("weight", 0 if out else 1)] + ([("bias", 0)] if out and layer.bias is not None else [])
    else:
        spec = [(n, d) for n, d, _ in pruners[type(layer)].param_slices(layer, out)]
    return [Slice(f"{name}.{n}", d, idxs) for n, d in spec]


def _consumer(DG, lin: nn.Module, stop: set, kinds: tuple) -> nn.Module | None:
    """The first layer of type ``kinds`` downstream of ``lin`` in the traced graph (the attention's output
    projection)."""
    node = DG.module2node.get(lin)
    stack, seen = list(node.outputs) if node is not None else [], set()
    while stack:
        n = stack.pop(0)
        if n in seen:
            continue
        seen.add(n)
        if isinstance(n.module, kinds) and n.module not in stop:
            return n.module
        if not isinstance(n.module, (nn.Linear, nn.modules.conv._ConvNd) + kinds):
            stack.extend(n.outputs)
    return None


def _rotary(m: nn.Module) -> bool:
    """Does attention ``m`` rotate queries and keys (Llama-style ``position_embeddings`` passed to its forward)?"""
    return _takes(m, "position_embeddings")


ATTENTION_UNITS = ("auto", "dim", "head")


def check_attention_unit(unit) -> str:
    """``unit`` if it is one of :data:`ATTENTION_UNITS`, else a ``ValueError`` naming them."""
    if unit not in ATTENTION_UNITS:
        raise ValueError(f"attention_unit={unit!r} is invalid: must be one of {', '.join(ATTENTION_UNITS)}")
    return unit


def attention_heads(model: nn.Module, DG=None, pruners: dict | None = None, unit: str = "auto") -> list[Heads]:
    """The multi-head attentions of ``model`` whose heads can be pruned:

    - a fused ``qkv`` Linear with ``proj`` and ``num_heads`` (metaprune's ViT, timm's ViT/DeiT): head dims;
    - a fused ``c_attn`` with ``c_proj``, ``num_heads`` and ``split_size`` (Hugging Face GPT-2, ``Conv1D``): head dims;
    - ``query``/``key``/``value`` (or ``q_proj``/``k_proj``/``v_proj``) with ``num_attention_heads`` or ``head_dim``,
      whose output projection is found in the traced graph (Hugging Face BERT, ViT: head dims; Llama-style
      attention with rotary embeddings or grouped-query attention, ``num_key_value_heads < num_attention_heads``:
      whole key/value heads with their query heads).

    ``unit`` (see :class:`Heads`): ``auto`` as listed; ``head`` removes whole heads everywhere (the head dim stays,
    the head count falls); ``dim`` removes head dims everywhere, refused with a ``ValueError`` naming the attention
    where only whole heads keep it intact (rotary embeddings, grouped-query attention).
    """
    check_attention_unit(unit)
    pruners = merge_pruners() if pruners is None else pruners
    layer_types = (nn.Linear, *pruners)
    found = []
    for name, m in model.named_modules():
        for qkv_name, proj_name in (("qkv", "proj"), ("c_attn", "c_proj")):
            qkv, proj, heads = getattr(m, qkv_name, None), getattr(m, proj_name, None), getattr(m, "num_heads", None)
            if not (isinstance(qkv, layer_types) and isinstance(proj, layer_types) and isinstance(heads, int)):
                continue
            width, fused = _width(proj, False, pruners), _width(qkv, True, pruners)
            if qkv_name == "c_attn" and getattr(m, "split_size", None) != width:
                continue  # GPT-2 cross attention (c_attn holds keys and values only)
            if width and fused == 3 * width and width % heads == 0 \
                    and isinstance(getattr(m, "q_norm", nn.Identity()), nn.Identity) and getattr(m, "gate", None) is None:
                found.append(Heads(m, [(qkv, 3, heads)], proj, heads, width // heads, heads,
                                   "head" if unit == "head" else "dim"))
                break
        else:
            names = ("query", "key", "value") if hasattr(m, "query") else ("q_proj", "k_proj", "v_proj")
            q, k, v = (getattr(m, n, None) for n in names)
            if DG is None or not all(isinstance(t, layer_types) for t in (q, k, v)):
                continue
            wq, wk, wv = (_width(t, True, pruners) for t in (q, k, v))
            heads = getattr(m, "num_attention_heads", getattr(m, "num_heads", None))
            hd = getattr(m, "head_dim", None)
            if not isinstance(hd, int) or isinstance(hd, bool):
                hd = wq // heads if isinstance(heads, int) and heads and wq % heads == 0 else None
            if not hd or wk != wv or wq % hd or wk % hd or (wq // hd) % (wk // hd):
                continue
            heads, kv_heads = wq // hd, wk // hd
            proj = _consumer(DG, v, {q, k, v}, layer_types)
            if proj is None or _width(proj, False, pruners) != wq:
                continue
            whole = ("grouped query heads share each key/value head" if kv_heads != heads else
                     "its rotary embedding pairs the dims of each head" if _rotary(m) else None)
            if unit == "dim" and whole:
                raise ValueError(f"attention_unit='dim' cannot prune attention {name or type(m).__name__} "
                                 f"({type(m).__name__}): {whole}, so only whole heads can go; use 'head' or 'auto'")
            found.append(Heads(m, [(q, 1, heads), (k, 1, kv_heads), (v, 1, kv_heads)], proj, heads, hd, kv_heads,
                               "head" if whole or unit == "head" else "dim"))
    return found


class DepGraph:
    """torch-pruning's dependency graph of ``model`` and its channel groups.

    ``ignored_layers``: module names whose output channels stay untouched (their input channels may
    still shrink with the layer before them). ``customized_pruners``: ``{layer type: pruner}`` used on top
    of the registered ones (``metaprune.layers.custom_pruners()``). Build it on the model you will prune;
    ``apply`` removes channel units in place. ``dependency_graph``: torch-pruning's graph of ``model`` already
    traced by :func:`build_dependency_graph` with the same pruners (the graph converter's trace), used instead of
    tracing again (``example_inputs`` is then unused). ``attention_unit``: what one unit of an attention group is,
    ``auto``, ``dim`` or ``head`` (see :func:`attention_heads`).
    """

    def __init__(self, model: nn.Module, example_inputs, ignored_layers=(), customized_pruners=None,
                 protect_outputs: bool = False, dependency_graph=None, attention_unit: str = "auto"):
        self.model = model
        self.attention_unit = check_attention_unit(attention_unit)
        self.pruners = merge_pruners(customized_pruners)
        modules = dict(model.named_modules())
        unknown = [n for n in ignored_layers if n not in modules]
        if unknown:
            raise ValueError(f"ignored layer(s) {unknown} are not modules of the model; "
                             f"names look like {[n for n in list(modules)[1:6]]}")
        self.ignored = [modules[n] for n in ignored_layers]
        self._check_custom_layers()
        if dependency_graph is not None:
            self.DG = dependency_graph
        else:
            with time_bound(f"tracing the dependency graph of {type(model).__name__}"):
                self.DG = build_dependency_graph(model, example_inputs, self.pruners)
        self.mod_name = {m: n for n, m in model.named_modules()}
        # ``protect_outputs``: the layers that write the model's outputs keep their output channels
        self.output_layers = custom_owner(model, [self.mod_name[m] for m in output_layers(self.DG, self.pruners)
                                                  if m in self.mod_name], self.pruners)
        if protect_outputs:
            self.ignored += [modules[n] for n in self.output_layers if modules[n] not in self.ignored]
        unruled = self._unruled_layers()
        self.param_name = {p: n for n, p in model.named_parameters()}
        # a parameter shared by several layers (tied embeddings) is named once, as named_parameters() names it
        self.canonical = {n: self.param_name[p] for n, p in model.named_parameters(remove_duplicate=False)}
        self.unwrapped_dim = {u.parameters: u.pruning_dim for u in self.DG.unwrapped_parameters}
        self.fixed = []  # roots of groups left alone: torch-pruning's index mapping through them is inconsistent
        with time_bound(f"building the channel groups of {type(model).__name__}"), _unmappable_ops_left_unmapped(), \
                _indexed_group_lookup():
            self.groups = self._build_groups()
        self._refuse_reached(unruled)

    # ------------------------------------------------------------------ checks
    def _unruled_layers(self) -> list:
        """``(name, layer)`` of every leaf layer with parameters that has no pruning rule (and is not ignored)."""
        ignored = set()
        for m in self.ignored:
            ignored.update(m.modules())
        bad = []
        unwrapped = {u.parameters for u in self.DG.unwrapped_parameters}
        for name, m in self.model.named_modules():
            # raw parameters of container modules (ViT cls token, position embedding) are pruned along a dim;
            # a leaf layer with parameters needs a pruning rule of its own
            own = list(m.parameters(recurse=False))
            if m in ignored or list(m.children()) or not own:
                continue
            # one number per parameter (timm's LearnableAffineBlock: a learned scale and shift of the whole tensor)
            # does not depend on the width: nothing to cut
            if all(p.numel() == 1 for p in own):
                continue
            # a plain holder of raw tensors with no forward of its own (an imported ONNX graph's constant
            # initializers: a [1, H] bias, a BatchNorm folded into [1, C, 1, 1] scales) is pruned along the traced
            # channel dim, like a ViT's pos_embed; a layer type with its own forward still needs a rule
            if type(m) is nn.Module and all(p in unwrapped for p in own):
                continue
            custom = type(m) in self.pruners
            kind = tp.ops.module2type(m)
            # unknown layers are traced as element-wise ops: their parameters would silently keep old shapes
            if not custom and (self.DG.get_pruner_of_module(m) is None or kind == tp.ops.OPTYPE.ELEMENTWISE):
                bad.append((name, m))
        return bad

    def _refuse_reached(self, bad: list) -> None:
        """Refuse the layers of ``bad`` (no pruning rule) that a channel group reaches. One no group reaches (a
        relative position bias table, sized by positions and heads) keeps its shapes whatever is pruned."""
        reached = self._reached | {id(m) for g in self.groups if g.attention is not None
                                   for m in [g.attention.proj] + [lin for lin, _, _ in g.attention.outs]}
        bad = [f"{name} ({type(m).__name__})" for name, m in bad
               if any(id(t) in reached for t in [*m.modules(), *m.parameters()])]
        if bad:
            raise UnprunableOpError(
                f"cannot prune layer(s) {', '.join(bad)}: no structural pruning rule for this op type; "
                "list them in prune.ignored_layers to keep them unchanged (and the channels feeding them)")

    def _check_custom_layers(self) -> None:
        """Before tracing: every layer with a custom pruner must have ``param_slices`` and be accepted by it."""
        ignored = {id(sub) for m in self.ignored for sub in m.modules()}
        for name, m in self.model.named_modules():
            pruner = self.pruners.get(type(m))
            if pruner is None or id(m) in ignored:
                continue
            if not callable(getattr(pruner, "param_slices", None)):
                raise UnprunableOpError(
                    f"the pruner of {name} ({type(m).__name__}) has no param_slices(layer, out): metaprune needs "
                    "the entries one channel owns for importance and MACs (see docs/custom_layers.md)")
            try:
                pruner.param_slices(m, True), pruner.param_slices(m, False)
            except NotImplementedError as e:  # the rule's own refusal (bidirectional LSTM, ...)
                raise UnprunableOpError(f"cannot prune layer {name} ({type(m).__name__}): {e}; list it in "
                                        "prune.ignored_layers to keep it unchanged") from None

    # ------------------------------------------------------------------ groups
    def _build_groups(self) -> list[Group]:
        ignored = {id(sub) for m in self.ignored for sub in m.modules()}
        order = {m: i for i, m in enumerate(self.DG.module2node)}
        found = []  # (position of the root in the traced graph, group)
        attn_layers = []
        for h in attention_heads(self.model, self.DG, self.pruners, self.attention_unit):
            layers = [lin for lin, _, _ in h.outs]
            attn_layers += layers
            if not any(id(lin) in ignored for lin in layers):  # the heads of q, k, v and the projection's input
                found.append((min(order.get(lin, len(order)) for lin in layers), self._attention_group(h)))
        # q, k, v root no channel group of torch-pruning's: their heads are one attention group above (and under
        # grouped-query attention its index mapping through the repeated key/value heads grows without bound)
        skip = [m for m in attn_layers if m not in self.ignored]
        self._reached = set()  # every layer or raw parameter a torch-pruning group reaches, kept or not
        for g in self.DG.get_all_groups(ignored_layers=self.ignored + skip, root_module_types=root_types(self.pruners)):
            self._reached.update(id(item.dep.target.module) for item in g)
            grp = self._channel_group(g)
            if grp is not None:
                found.append((order.get(g[0].dep.target.module, len(order)), grp))
        return [grp for _, grp in sorted(found, key=lambda t: t[0])]

    def _channel_groups_of(self, g) -> int:
        """How many interleaved channel blocks the root splits into (grouped convs), as torch-pruning does."""
        ch = 1
        for item in g:
            m, fn = item.dep.target.module, item.dep.handler
            if not isinstance(m, nn.Module):
                continue
            if isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels:
                continue  # depthwise: channels stay one-to-one
            pruner = self.DG.get_pruner_of_module(m)
            if pruner is None:
                continue
            out = self.DG.is_out_channel_pruning_fn(fn)
            n = pruner.get_out_channel_groups(m) if out else pruner.get_in_channel_groups(m)
            ch = max(ch, n or 1)
        return ch

    def _channel_group(self, g) -> Group | None:
        root_mod = g[0].dep.target.module
        n_root = len(g[0].idxs)
        ch = self._channel_groups_of(g)
        if n_root % ch:
            return None
        units = n_root // ch
        # unit j holds root channels j, j + units, j + 2 units, ... (torch-pruning's channel grouping)
        unit_roots = torch.arange(n_root).view(ch, units).t().contiguous()
        if any(item.root_idxs is None or any(r is None for r in item.root_idxs) for item in g if len(item.idxs)):
            return None  # an index mapping torch-pruning cannot trace back to the root: leave the group alone
        unit_roots = _coupled_roots(g, unit_roots)
        if unit_roots is None:  # root channels coupled in sets of unequal size: no channel unit fits them all
            self.fixed.append(self.mod_name.get(root_mod, str(root_mod)))
            return None
        units = len(unit_roots)
        unit_of_root = torch.empty(n_root, dtype=torch.long)
        unit_of_root[unit_roots.flatten()] = torch.arange(units).repeat_interleave(unit_roots.shape[1])
        if any(_drops_channels(n) or _unmapped(n) for item in g for n in (item.dep.target, item.dep.source)):
            # channels pass a slice that drops some (GhostNet's ``cat([a, b])[:, :n]``): its bounds are constants of
            # the forward, so after a cut other channels would slide into the kept range; or an op torch-pruning could
            # not map (a channel shuffle, a concatenation of unknown widths) puts no channel in its place. Leave the
            # group alone
            self.fixed.append(self.mod_name.get(root_mod, str(root_mod)))
            return None
        slices, partial, seen, multiple, custom = [], [], set(), 1, False
        for item in g:
            m, fn = item.dep.target.module, item.dep.handler
            targets = torch.as_tensor(list(item.idxs), dtype=torch.long)
            roots = torch.as_tensor(list(item.root_idxs), dtype=torch.long)
            if isinstance(m, nn.MultiheadAttention):
                multiple = _lcm(multiple, m.num_heads)
            custom |= type(m) in self.pruners
            for pname, dim, offset_fn in self._param_dims(m, fn):
                key = (pname, dim)
                if key in seen:
                    continue
                seen.add(key)
                cols = _columns(targets, unit_of_root[roots], units)
                if cols is None:  # units own unequal numbers of entries: counted on average (see Group.partial)
                    entries = torch.unique(torch.cat([torch.as_tensor(off(targets)) for off in offset_fn]))
                    partial.append((pname, dim, len(entries) / units))
                    continue
                # a unit owns an entry once, even where several of its channels map onto it (all heads' att_src
                # entry of one GATConv head dimension, a grouped conv's shared input column)
                picked = {}
                for col in cols:
                    for off in offset_fn:
                        idxs = off(col)
                        picked.setdefault(tuple(idxs.tolist()), idxs)
                slices += [Slice(pname, dim, idxs) for idxs in picked.values()]
        if not slices:
            return None
        shapes = {n: p.shape for n, p in self.model.named_parameters()}
        if any(len(sl.idxs) and int(sl.idxs.max()) >= shapes[sl.param][sl.dim] for sl in slices if sl.param in shapes):
            # torch-pruning mapped the channels through an op it cannot follow (a Reshape to a constant head count
            # in an imported graph): indices past a parameter's end. Leave the group, and its layer, as they are
            self.fixed.append(self.mod_name.get(root_mod, str(root_mod)))
            return None
        # frozen copies: some torch-pruning criteria sort a group's index lists in place
        cuts = [(item.dep, torch.as_tensor(list(item.idxs), dtype=torch.long),
                 torch.as_tensor(list(item.root_idxs), dtype=torch.long))
                for item in g if len(item.idxs)]
        return Group(root=self.mod_name.get(root_mod, str(root_mod)), units=units, slices=slices,
                     multiple=multiple, custom=custom, unit_roots=unit_roots, tp_group=g, cuts=cuts, partial=partial)

    def _param_dims(self, m, fn):
        """(param name, dim, [index transforms]) touched when ``fn`` prunes channels of ``m``."""
        ident = [lambda t: t]
        if isinstance(m, nn.Parameter):
            name = self.param_name.get(m)
            return [(name, self.unwrapped_dim.get(m, m.dim() - 1), ident)] if name else []
        prefix = self.mod_name.get(m)
        if prefix is None:
            return []

        def p(n):
            full = f"{prefix}.{n}" if prefix else n
            return self.canonical.get(full, full)

        out = self.DG.is_out_channel_pruning_fn(fn)
        custom = self.pruners.get(type(m))
        if custom is not None:  # the rule lists what one channel owns (checked in _check_custom_layers)
            return [(p(n), dim, maps) for n, dim, maps in custom.param_slices(m, out)]
        res = []
        if isinstance(m, nn.modules.conv._ConvNd):
            wdim_out = 1 if m.transposed else 0
            if out:
                res.append((p("weight"), wdim_out, ident))
                if m.bias is not None:
                    res.append((p("bias"), 0, ident))
            elif m.groups == 1:
                res.append((p("weight"), 1 - wdim_out, ident))
            elif m.groups != m.in_channels:  # grouped (not depthwise): index within a group's input block
                per = m.in_channels // m.groups
                res.append((p("weight"), 1 - wdim_out, [lambda t, per=per: t % per]))
        elif isinstance(m, nn.Linear):
            if out:
                res.append((p("weight"), 0, ident))
                if m.bias is not None:
                    res.append((p("bias"), 0, ident))
            else:
                res.append((p("weight"), 1, ident))
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
                            nn.modules.instancenorm._InstanceNorm)):
            for n in ("weight", "bias"):
                t = getattr(m, n, None)
                if isinstance(t, nn.Parameter):
                    res.append((p(n), t.dim() - 1 if isinstance(m, nn.LayerNorm) else 0, ident))
        elif isinstance(m, nn.PReLU):
            if m.weight.numel() > 1:
                res.append((p("weight"), 0, ident))
        elif isinstance(m, nn.Embedding):
            res.append((p("weight"), 1, ident))
        elif isinstance(m, nn.MultiheadAttention) and out:
            e = m.embed_dim
            qkv = [lambda t: t, lambda t, e=e: t + e, lambda t, e=e: t + 2 * e]
            if m.in_proj_weight is not None:
                res += [(p("in_proj_weight"), 0, qkv), (p("in_proj_weight"), 1, ident)]
            if m.in_proj_bias is not None:
                res.append((p("in_proj_bias"), 0, qkv))
            res += [(p("out_proj.weight"), 0, ident), (p("out_proj.weight"), 1, ident)]
            if m.out_proj.bias is not None:
                res.append((p("out_proj.bias"), 0, ident))
            for n in ("bias_k", "bias_v"):
                if getattr(m, n, None) is not None:
                    res.append((p(n), 2, ident))
        return res

    def _attention_group(self, h: Heads) -> Group:
        """The units of an attention (see :class:`Heads`): each owns the same number of rows in q, k, v (in every
        block of a fused qkv) and of input columns of the projection; slice ``j`` holds the ``j``-th of each unit."""
        slices = []
        for layer, blocks, heads in h.outs:
            own = torch.stack([h.rows(heads, [u]) for u in range(h.units)])  # [units, k]
            width = heads * h.head_dim
            for b in range(blocks):
                for col in (b * width + own).t():
                    slices += _layer_slices(self.mod_name[layer], layer, True, col, self.pruners)
        own = torch.stack([h.rows(h.heads, [u]) for u in range(h.units)])
        for col in own.t():
            slices += _layer_slices(self.mod_name[h.proj], h.proj, False, col, self.pruners)
        for sl in slices:
            sl.param = self.canonical.get(sl.param, sl.param)
        return Group(root=self.mod_name[h.outs[0][0]], units=h.units, slices=slices, kind="attention", tp_group=None,
                     attention=h, custom=any(type(m) in self.pruners for m, _, _ in h.outs))

    # ------------------------------------------------------------------ pruning
    def _replace_parameter(self, old: nn.Parameter, new: nn.Parameter) -> None:
        path = self.param_name[old].split(".")
        parent = self.model.get_submodule(".".join(path[:-1])) if len(path) > 1 else self.model
        setattr(parent, path[-1], new)

    def params(self) -> dict[str, torch.Tensor]:
        return dict(self.model.named_parameters())

    @torch.no_grad()
    def apply(self, removed: dict[int, torch.Tensor]) -> None:
        """Remove channel units in place: ``removed[i]`` = unit ids of ``self.groups[i]`` to drop.

        Call once per DepGraph: indices refer to the model as it was when the graph was built. A parameter shared by
        several layers (a language model's embedding tied to its output layer) is shared again afterwards.
        """
        tied = tied_parameters(self.model)
        ops = {}
        for gi, units in removed.items():
            if len(units) == 0:
                continue
            grp = self.groups[gi]
            units = torch.as_tensor(units, dtype=torch.long)
            if grp.kind == "attention":
                grp.attention.cut(units, self.pruners)
                continue
            roots = grp.unit_roots[units].flatten()
            for dep, targets, target_roots in grp.cuts:
                sel = targets[torch.isin(target_roots, roots)].tolist()
                if sel:
                    key = (id(dep.target.module), dep.handler)
                    ops.setdefault(key, (dep, set()))[1].update(sel)
        # every index is in the unpruned model's coordinates, so each (layer, dim) is cut once with the union
        # of its indices; re-deriving groups after each cut (torch-pruning's way) costs seconds on DenseNets
        for dep, idxs in ops.values():
            idxs = sorted(idxs)
            if dep.target.type == tp.ops.OPTYPE.PARAMETER:
                self._replace_parameter(dep.target.module, dep(idxs))
            else:
                dep(idxs)
        retie(self.model, tied)
        _sync_static_attrs(self.model)


def tied_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    """``(module, attribute)`` places of every parameter held by more than one place."""
    places = {}
    for m in model.modules():
        for n, p in m._parameters.items():
            if p is not None:
                places.setdefault(id(p), []).append((m, n))
    return [v for v in places.values() if len(v) > 1]


def retie(model: nn.Module, tied) -> None:
    """Share each group of ``tied`` places again (pruning replaced each place's parameter by its own pruned copy)."""
    for places in tied:
        first = getattr(*places[0])
        for m, n in places[1:]:
            if getattr(m, n).shape != first.shape:
                raise RuntimeError(f"tied parameter {type(m).__name__}.{n} was pruned to {tuple(getattr(m, n).shape)} "
                                   f"but its twin to {tuple(first.shape)}")
            setattr(m, n, first)


def output_layers(DG, pruners: dict | None = None) -> list[nn.Module]:
    """The layers whose output channels are the model's output channels, from the traced graph: walking back from
    every output through parameter-free ops (reshape, pooling, activation, add, concat), norms and depthwise convs
    to the first Conv / Linear / custom layer on each path. Layer types are matched with ``isinstance``, so a
    library's subclass (timm's ``Linear`` classifier) counts; a residual stream that reaches the output yields every
    layer writing into it."""
    roots = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention, nn.RNNBase,
             *(pruners if pruners is not None else custom_pruners()))
    stack = [n for n in DG.module2node.values() if not n.outputs]
    seen, found = set(), []
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        m = node.module
        if isinstance(m, roots):
            found.append(m)
            depthwise = isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels \
                == m.out_channels
            if not depthwise:  # a depthwise conv's channels are its input's: keep walking
                continue
        stack.extend(node.inputs)
    return list(dict.fromkeys(found))


def _set_ints(m: nn.Module, names, value: int) -> None:
    """Set each of ``names`` that ``m`` holds as an int (not a bool) to ``value``."""
    for name in names:
        if isinstance(getattr(m, name, None), int) and not isinstance(getattr(m, name), bool):
            setattr(m, name, value)


def _sync_torchvision_vit(m: nn.Module) -> None:
    """torchvision's ViT reads ``hidden_dim`` (its token width) in forward."""
    if isinstance(getattr(m, "hidden_dim", None), int) and isinstance(getattr(m, "conv_proj", None), nn.Conv2d):
        m.hidden_dim = m.conv_proj.out_channels


def _sync_multihead_attention(m: nn.Module) -> None:
    if isinstance(m, nn.MultiheadAttention):
        m.head_dim = m.embed_dim // m.num_heads
        m.kdim = m.vdim = m.embed_dim


def _sync_gpt2(m: nn.Module) -> None:
    """Hugging Face GPT-2 keeps its token width as ``embed_dim`` in the model (read by nothing in forward; kept true)
    and in each attention beside ``split_size``."""
    if isinstance(getattr(m, "wte", None), nn.Embedding):
        _set_ints(m, ("embed_dim",), m.wte.embedding_dim)
    if isinstance(getattr(m, "split_size", None), int) and hasattr(m, "c_proj"):
        _set_ints(m, ("embed_dim",), m.c_proj.weight.shape[-1])


def _sync_split_convs(m: nn.Module) -> None:
    """A block splitting its input among its child convs (timm's MixedConv2d): the split sizes are theirs."""
    splits, convs = getattr(m, "splits", None), list(m.children())
    if isinstance(splits, list) and len(splits) == len(convs) > 0 \
            and all(isinstance(c, nn.modules.conv._ConvNd) for c in convs):
        m.splits = [c.in_channels for c in convs]
        _set_ints(m, ("in_channels",), sum(m.splits))
        _set_ints(m, ("out_channels",), sum(c.out_channels for c in convs))


def _sync_timm_vit(m: nn.Module) -> None:
    """timm's ViT/DeiT: the token width is its patch embedding's."""
    proj = getattr(getattr(m, "patch_embed", None), "proj", None)
    if type(m).__module__.startswith("timm.") and isinstance(proj, nn.Conv2d):
        _set_ints(m, ("embed_dim", "num_features", "head_hidden_size"), proj.out_channels)


# width attributes some model families read in forward (or keep as their width), updated after every pruning
WIDTH_RULES = [_sync_torchvision_vit, _sync_multihead_attention, _sync_gpt2, _sync_split_convs, _sync_timm_vit]


def _sync_static_attrs(model: nn.Module) -> None:
    """Apply every rule of ``WIDTH_RULES`` to every module of ``model``."""
    for m in model.modules():
        for rule in WIDTH_RULES:
            rule(m)


def _coupled_roots(g, unit_roots: torch.Tensor) -> torch.Tensor | None:
    """``unit_roots`` ([units, k] root channel ids) merged with the root channels that one layer channel is reached
    from by two paths of group ``g``.

    torch-pruning records one root channel per layer channel: the first path that reached it. Where a channel is
    reachable from two root channels (GhostNet: its cheap depthwise conv copies channel ``i`` of the primary conv to
    channel ``init + i`` of ``cat([primary, cheap])``, so a residual stream's channels ``i`` and ``init + i`` are one
    unit), removing one root channel alone leaves the layers on the other path at their old width. Each dependency's
    index mapping is replayed on its source's channels and every root channel it lands on joins the recorded one.
    Returns None when the merged sets differ in size."""
    parent = list(range(int(unit_roots.max()) + 1))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a, b):
        a, b = find(a), find(b)
        if a != b:
            parent[max(a, b)] = min(a, b)

    for row in unit_roots.tolist():
        for r in row[1:]:
            union(row[0], r)
    # (target node, pruning fn) -> {channel: root channel} as torch-pruning recorded it
    recorded = {}
    for item in g:
        rec = recorded.setdefault((item.dep.target, item.dep.handler), {})
        for i, r in zip(item.idxs, item.root_idxs):
            if i in rec:
                union(rec[i], r)
            else:
                rec[i] = r
    merged = False
    for item in g:
        dep = item.dep
        src = recorded.get((dep.source, dep.trigger))
        if not src or dep.source is dep.target:
            continue
        mapped = [tp._helpers._HybridIndex(idx=i, root_idx=r) for i, r in src.items()]
        for mapping in dep.index_mapping:
            if mapping is not None:
                mapped = mapping(mapped)
        rec = recorded[(dep.target, dep.handler)]
        for h in mapped:
            r = rec.get(h.idx)
            if r is not None and find(r) != find(h.root_idx):
                union(r, h.root_idx)
                merged = True
    if not merged:
        return unit_roots
    sets = {}
    for r in unit_roots.flatten().tolist():
        sets.setdefault(find(r), []).append(r)
    sizes = {len(v) for v in sets.values()}
    if len(sizes) != 1:
        return None
    return torch.tensor(sorted(sorted(v) for v in sets.values()), dtype=torch.long)


def _drops_channels(node) -> bool:
    """Is ``node`` a slice of the channel dim that keeps only part of it (``x[:, :n]`` of more than ``n`` channels,
    ``x[:, k:]``, a step)? The channel dim is torch-pruning's: dim 1 of a 2-D or 4-D tensor, the last of a 3-D one."""
    if getattr(node, "type", None) != tp.ops.OPTYPE.SLICE:
        return False
    op, sizes = node.module, getattr(node.grad_fn, "_saved_self_sym_sizes", None)
    if sizes is None:
        return True  # unknown extent: assume it drops channels
    channel_dim = 2 if len(sizes) == 3 else 1
    if op.dim not in (channel_dim, channel_dim - len(sizes)):
        return False
    size = int(sizes[op.dim])
    start = int(op.start or 0)
    end = size if op.end is None else int(op.end)
    return (start % size if start < 0 else start) != 0 or op.step != 1 or (end % size if end < 0 else end) < size


def _columns(targets: torch.Tensor, unit_ids: torch.Tensor, units: int) -> list[torch.Tensor] | None:
    """Split target indices into k columns of length ``units`` (column j: the j-th target of each unit)."""
    counts = torch.bincount(unit_ids, minlength=units)
    if len(counts) == 0 or (counts != counts[0]).any() or counts[0] == 0:
        return None
    order = torch.argsort(unit_ids * (targets.max() + 1) + targets, stable=True)
    return list(targets[order].view(units, -1).t())


def _lcm(a: int, b: int) -> int:
    import math

    return a * b // math.gcd(a, b)


_MAPPINGS = ("update_concat_index_mapping", "update_split_index_mapping", "update_reshape_index_mapping",
             "update_unbind_index_mapping", "update_expand_index_mapping", "update_slice_index_mapping")


@contextlib.contextmanager
def _patched(owner, replacements: dict):
    """Within this block each attribute ``name`` of ``owner`` (a torch-pruning module or class) is
    ``replacements[name](original)``; the originals are put back afterwards, also on error."""
    originals = {name: getattr(owner, name) for name in replacements}
    for name, wrap in replacements.items():
        setattr(owner, name, wrap(originals[name]))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(owner, name, original)


def _guarded(original):
    def update(graph, node):
        try:
            original(graph, node)
        except Exception:
            node.metaprune_unmapped = True
    return update


def _unmappable_ops_left_unmapped():
    """Within this block an op whose channel index mapping torch-pruning fails to work out (it divides by an inferred
    width of 0 at a channel shuffle's reshape, or sums an unknown width at a CSP block's concatenation) is left
    without a mapping and marked, instead of the whole trace raising; :func:`_unmapped` then keeps every group through
    it whole. torch-pruning itself leaves an op unmapped where it sees it cannot infer a width."""
    from torch_pruning.dependency import index_mapping as im

    return _patched(im, {name: _guarded for name in _MAPPINGS})


def _op_key(dep, idxs) -> tuple:
    return id(dep.target), dep.handler, tuple(idxs)


def _has_pruning_op(self, dep, idxs) -> bool:
    index, n = self.__dict__.get("_metaprune_ops", (set(), 0))
    if n > len(self._group):  # items were removed: index again
        index, n = set(), 0
    index.update(_op_key(d, i) for d, i in self._group[n:])
    self._metaprune_ops = (index, len(self._group))
    return _op_key(dep, idxs) in index


def _indexed_group_lookup():
    """Within this block torch-pruning's ``Group.has_pruning_op`` (is this dependency with these indices already in
    the group?) looks the operation up in a set instead of comparing it with every item of the group: the same
    answer, without the quadratic scan that took 222 of 250 s building MobileViT-v2's groups."""
    from torch_pruning.dependency.group import Group as TPGroup

    return _patched(TPGroup, {"has_pruning_op": lambda original: _has_pruning_op})


def _unmapped(node) -> bool:
    """Is ``node`` an op torch-pruning maps no channel through: one whose mapping failed (see
    :func:`_unmappable_ops_left_unmapped`), or a concatenation whose input widths it could not infer?"""
    return getattr(node, "metaprune_unmapped", False) or (
        getattr(node, "type", None) == tp.ops.OPTYPE.CONCAT and None in (node.module.concat_sizes or ()))


def build_dependency_graph(model: nn.Module, example_inputs, pruners: dict | None = None, forward_fn=None):
    """torch-pruning's ``DependencyGraph`` of ``model`` with the custom pruners ``pruners`` (default: the
    registered ones): the one place metaprune builds one (``DepGraph`` here, the graph converter's trace).

    The tracer follows autograd, so it runs with grad enabled and frozen weights made trainable for the trace
    (a ``no_grad`` caller or frozen layers would hide every layer); each module's train/eval mode and every
    ``requires_grad`` flag are restored afterwards, also when tracing fails."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    if forward_fn is None and _takes(model, "use_cache"):
        # a decoder traced without its key/value cache: the cache's concatenation along the sequence is no channel
        # op, and the cache is no output
        forward_fn = _forward_without_cache
    try:
        for p in frozen:
            p.requires_grad_(True)
        # the tracer leaves the model in eval mode
        with preserve_mode(model), warnings.catch_warnings(), torch.enable_grad(), _unmappable_ops_left_unmapped():
            warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
            warnings.filterwarnings("ignore", category=UserWarning, module="torch_pruning")
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, forward_fn=forward_fn, output_transform=output_tensors,
                verbose=False,
                customized_pruners=custom_pruners() if pruners is None else pruners)
    finally:
        for p in frozen:
            p.requires_grad_(False)


def output_tensors(out) -> list[torch.Tensor]:
    """The tensors a forward returned, through tuples, lists and dicts (Hugging Face's ``ModelOutput``): the outputs
    the tracer starts from. A decoder's key/value cache is state for the next call, not an output: a ``Cache``
    object is skipped, as are the ``past_key_values`` of older ``transformers`` versions (tuples of tensors)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for k, v in out.items() if k not in ("past_key_values", "cache") for t in output_tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in output_tensors(v)]
    return []


def _takes(model: nn.Module, arg: str) -> bool:
    import inspect

    try:
        return arg in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _forward_without_cache(model: nn.Module, example_inputs):
    return model(example_inputs, use_cache=False)


def root_types(pruners: dict | None = None) -> tuple:
    """Module types whose output channels root DepGraph groups: convs, linears and every custom layer type."""
    return ROOT_TYPES + tuple(custom_pruners() if pruners is None else pruners)


def merge_pruners(customized_pruners=None) -> dict:
    """The registered custom pruners with ``customized_pruners`` (``{layer type: pruner}``) on top."""
    extra = dict(customized_pruners or {})
    for layer_type, pruner in extra.items():
        if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
            raise TypeError(f"customized_pruners keys must be nn.Module subclasses, got {layer_type!r}")
        check_pruner(layer_type, pruner)
    return {**custom_pruners(), **extra}


def custom_owner(model: nn.Module, names, pruners: dict) -> list[str]:
    """``names`` with every layer inside a custom layer (GATConv's ``lin``) replaced by that outermost custom layer:
    what protects a layer's output channels there is protecting the custom layer."""
    custom = [n for n, m in model.named_modules() if n and type(m) in pruners]
    outer = [min((c for c in custom if n.startswith(c + ".")), key=len, default=n) for n in names]
    return list(dict.fromkeys(outer))


def tp_pruner_kwargs(customized_pruners=None) -> dict:
    """``customized_pruners`` and ``root_module_types`` for torch-pruning's own pruners (``MetaPruner``,
    ``GroupNormPruner``), so that the registered custom layers are traced and pruned there too."""
    pruners = merge_pruners(customized_pruners)
    return {"customized_pruners": pruners,
            "root_module_types": [tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR, tp.ops.TORCH_LSTM, *pruners]}


def groups(model: nn.Module, example_inputs, ignored=(), customized_pruners=None,
           attention_unit: str = "auto") -> list[Group]:
    """The channel groups of ``model``: one :class:`Group` per DepGraph group, with every coupled parameter
    slice (see the module docstring). The graph converter's node view of them is ``to_graph(..., groups=True)``.

    ``ignored``: module names whose output channels are left alone (pass the classifier's name;
    ``metaprune.cost.find_output_layers(model, example_inputs)`` finds it). ``customized_pruners``: ``{layer type: pruner}`` on
    top of the registered ones. ``attention_unit``: ``auto``, ``dim`` or ``head``, what one unit of an attention
    group removes (see :func:`attention_heads`). The indices refer to the model as it is now; recompute after the
    model's shapes change.
    """
    return DepGraph(model, example_inputs, ignored, customized_pruners, attention_unit=attention_unit).groups


class PerChannelPruner(BasePruningFunc):
    """Removes channels of a layer whose own parameters all hold one value per channel along their first dim, input
    and output channels being the same channels: a layer scale (timm's ``LayerScale``/``LayerScale2d``, FastViT's and
    SwiftFormer's ``gamma`` of shape ``[C, 1, 1]``: ``x * gamma``) and timm's channel norms (``RmsNorm``,
    ``RmsNorm2d``, ``SimpleNorm``, ``SimpleNorm2d``, ``GlobalResponseNorm``: a weight, maybe a bias, or none when
    built without affine parameters). A ``normalized_shape`` of one channel count follows."""

    @staticmethod
    def _params(layer) -> dict:
        """The layer's own parameters (none for a norm built without affine parameters)."""
        own = dict(layer.named_parameters(recurse=False))
        if own and (len({p.shape[0] for p in own.values()}) != 1
                    or any(p.dim() == 0 or p.numel() != p.shape[0] for p in own.values())):
            raise NotImplementedError(f"{type(layer).__name__} is pruned through parameters holding one value per "
                                      f"channel along their first dim; it holds "
                                      f"{ {n: tuple(p.shape) for n, p in own.items()} }")
        return own

    def param_slices(self, layer, out: bool):
        return [(n, 0, [lambda t: t]) for n in self._params(layer)]

    def prune_out_channels(self, layer, idxs) -> nn.Module:
        own = self._params(layer)
        shape = getattr(layer, "normalized_shape", None)
        one = isinstance(shape, tuple) and len(shape) == 1
        width = next(iter(own.values())).shape[0] if own else shape[0] if one else None
        if width is None:  # no parameter and no recorded width: nothing to cut
            return layer
        keep = kept_indices(width, idxs)
        for n, p in own.items():
            setattr(layer, n, self._prune_parameter_and_grad(p, keep.to(p.device), 0))
        if one:
            layer.normalized_shape = (len(keep),)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        own = self._params(layer)
        return next(iter(own.values())).shape[0] if own else None

    get_in_channels = get_out_channels

    def macs_terms(self, layer, inputs, output):
        """One multiply per element and parameter (none without parameters)."""
        own = self._params(layer)
        if not own:
            return []
        per = float(inputs[0].numel() // self.get_out_channels(layer))
        return [(per, [(n, 0)]) for n in own]


for _suffix in ("LayerScale", "LayerScale2d"):
    _register_by_name("timm.", _suffix, PerChannelPruner())
for _suffix in ("RmsNorm", "RmsNorm2d", "SimpleNorm", "SimpleNorm2d", "GlobalResponseNorm"):
    _register_by_name("timm.layers", _suffix, PerChannelPruner())


class ChannelBufferPruner(BasePruningFunc):
    """Removes channels of a parameter-free per-channel filter (timm's ``BlurPool2d``: a fixed blur kernel buffer
    ``filt`` of one row per channel, applied as a depthwise conv with ``groups=channels``): the buffer's rows and the
    ``channels`` count. Input and output channels are the same channels; nothing is learned, so no entry is scored."""

    @staticmethod
    def _filt(layer):
        f = getattr(layer, "filt", None)
        if not isinstance(f, torch.Tensor) or list(layer.parameters(recurse=False)):
            raise NotImplementedError(f"{type(layer).__name__} is pruned through a per-channel filter buffer alone")
        return f

    def param_slices(self, layer, out: bool):
        self._filt(layer)
        return []

    def prune_out_channels(self, layer, idxs) -> nn.Module:
        f = self._filt(layer)
        if getattr(layer, "channels", None) is None:  # one filter for any width: nothing to cut
            return layer
        keep = kept_indices(f.shape[0], idxs).to(f.device)
        layer.filt = f.index_select(0, keep)
        layer.channels = len(keep)
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return getattr(layer, "channels", None)

    get_in_channels = get_out_channels


_register_by_name("timm.layers.blur_pool", "BlurPool2d", ChannelBufferPruner())
