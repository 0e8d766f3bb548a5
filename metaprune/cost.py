"""Analytic MACs and parameter counts of a pruning plan, without touching the model.

One forward pass records every counted layer's input/output shapes. A layer's cost is then a sum of
terms ``coef * x_a * x_b`` where ``x`` are the *kept sizes* of parameter dimensions (conv MACs =
k*H*W*out*in/groups = k*H*W * weight.shape[0] * weight.shape[1]). A plan removes ``r_g`` units from group ``g``;
every dimension's kept size is ``size - sum_g r_g * (slices of that dim in g)``. The formulas mirror
torch-pruning's op counter as ``macs_and_params`` corrects it (also ``metaprune.metrics.macs_and_params``); the
counter counts modules by exact type (a subclass such as torchvision's ``LayerNorm2d`` counts nothing).
Evaluating thousands of plans so costs microseconds each instead of a pruned copy and a forward pass. Layers
with no parameters (ReLU, pooling) scale with the layer that produced their input; counted layers without a
formula here are constant.

Custom layers (a registered pruner, a type the counter does not know) are counted by both this model and
``macs_and_params``: their pruner's optional ``macs_terms(layer, inputs, output)`` returns ``[(coef, [(param name,
dim), ...]), ...]`` (``coef`` times the product of those dimensions' sizes, per forward of the layer); without
it a custom layer costs its own parameter count once per sample (exact for linear-like layers; a layer that
reuses its weights per position or edge should define ``macs_terms``). Parameters of submodules the counter
knows (GATConv's ``lin``) are counted by the counter, not again here.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from .depgraph import MODULES_MAPPING, Group, count_ops_and_params, custom_owner, merge_pruners
from .utils import preserve_mode

_ACT = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.GELU)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)


def _counted(m: nn.Module) -> bool:
    """Does torch-pruning's op counter count ``m`` (by exact type, as it does)?"""
    return type(m) in MODULES_MAPPING


def _custom_terms(name: str, m: nn.Module, pruner, inputs, out, batch: int) -> list:
    """``[(coef, [(full param name, dim)])]`` of a custom layer's MACs in one forward (see the module docstring)."""
    if callable(getattr(pruner, "macs_terms", None)):
        terms = pruner.macs_terms(m, inputs, out)
    else:  # its own parameters once per sample; counted submodules are the counter's
        seen = {id(p) for sub in m.modules() if sub is not m and _counted(sub) for p in sub.parameters()}
        terms = [(float(batch), [(n, d) for d in range(p.dim())]) for n, p in m.named_parameters()
                 if id(p) not in seen]
    params = dict(m.named_parameters())
    for _, dims in terms:
        for pname, d in dims:
            if pname not in params or not 0 <= d < params[pname].dim():
                raise ValueError(f"macs_terms of {name} ({type(m).__name__}) names ({pname!r}, dim {d}), which is "
                                 f"not a parameter dimension of the layer (parameters: {sorted(params)})")
    return [(float(c), [(f"{name}.{pname}", d) for pname, d in dims]) for c, dims in terms]


def _first_out_slice(pruner, m: nn.Module):
    """``(param name, dim)`` of the first entry an output channel of ``m`` owns, or None if the rule gives none."""
    try:
        slices = pruner.param_slices(m, True) if callable(getattr(pruner, "param_slices", None)) else []
    except NotImplementedError:
        return None
    return slices[0][:2] if slices else None


def trace_modules(model: nn.Module, example_inputs, pruners: dict | None = None):
    """One no-grad forward recording (name, module, input shape, output shape, producer) of counted layers
    and of custom layers (``pruners``: ``{layer type: pruner}``, default the registered ones), whose records
    carry their MACs ``terms``.

    Returns ``(records, output_layers)``; ``output_layers`` are the Conv/Linear (or custom) layers whose output
    is the model output (the classifier to protect).
    """
    pruners = merge_pruners() if pruners is None else pruners
    records, produced, last_by_shape = [], {}, {}
    batch = len(example_inputs) if isinstance(example_inputs, torch.Tensor) and example_inputs.dim() else 1

    def hook(name):
        def fn(mod, inp, out):
            x = inp[0] if isinstance(inp, tuple) and inp else inp
            if isinstance(out, tuple):
                out = out[0]
            if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
                return
            producer = produced.get(x.data_ptr()) or last_by_shape.get(tuple(x.shape))
            rec = {"name": name, "module": mod, "in": tuple(x.shape), "out": tuple(out.shape),
                   "producer": producer, "batch": batch, "q_k_v": [tuple(t.shape) for t in inp[:3]]
                   if isinstance(mod, nn.MultiheadAttention) else None}
            pruner = pruners.get(type(mod))
            if pruner is not None and not _counted(mod):
                first = _first_out_slice(pruner, mod)  # its output channel count scales the layers after it
                if first is not None:  # else DepGraph names the layer (or it is protected and costs nothing)
                    rec["custom"] = {"terms": _custom_terms(name, mod, pruner, inp, out, batch),
                                     "out": (f"{name}.{first[0]}", first[1])}
            records.append(rec)
            produced[out.data_ptr()] = name
            last_by_shape[tuple(out.shape)] = name
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if n and (_counted(m) or type(m) in pruners)]
    try:
        with torch.no_grad(), preserve_mode(model):
            out = model.eval()(example_inputs)
    finally:
        for h in handles:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else list(out.values()) if isinstance(out, dict) else [out]
    by_name = {r["name"]: r for r in records}

    def is_layer(m):
        return isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) or type(m) in pruners

    heads = []
    for o in outs:
        if isinstance(o, torch.Tensor):
            n = produced.get(o.data_ptr())
            if n and is_layer(by_name[n]["module"]):
                heads.append(n)
    if not heads:
        heads = [r["name"] for r in records if is_layer(r["module"])][-1:]
    return records, sorted(custom_owner(model, heads, pruners))


def find_output_layers(model: nn.Module, example_inputs, customized_pruners=None) -> list[str]:
    """Names of the Conv/Linear (or custom) layers whose output is the model output (the classifier to protect)."""
    return trace_modules(model, example_inputs, merge_pruners(customized_pruners))[1]


def _own_count(m: nn.Module, pruners: dict) -> bool:
    """Layers whose MACs metaprune counts itself: custom layers the counter does not know, and ``nn.LSTM``."""
    return type(m) is nn.LSTM or (type(m) in pruners and not _counted(m))


def macs_and_params(model: nn.Module, example_inputs, pruners: dict | None = None) -> tuple[int, int]:
    """MACs per sample of one forward pass on ``example_inputs`` and the parameter count (the one MACs count
    metaprune reports; also ``metaprune.metrics.macs_and_params``): torch-pruning's op counter with two changes. Custom layers it does not count are added (see the module docstring), and ``nn.LSTM`` is
    counted once per time step of a sample: the counter multiplies its per-step count by
    ``input[0].shape[0] * input[0].shape[1]`` (steps x features for a batch-first input), then divides by the batch."""
    pruners = merge_pruners() if pruners is None else pruners
    with preserve_mode(model):  # the counter leaves the model in eval mode
        macs, params, per_layer, _ = count_ops_and_params(model, example_inputs, layer_wise=True)
    if not any(_own_count(m, pruners) for m in model.modules()):
        return int(macs), int(params)
    records, _ = trace_modules(model, example_inputs, pruners)
    own = [r for r in records if _own_count(r["module"], pruners)]
    # what the counter gave the LSTMs (a custom layer's entry there is its counted submodules', which stay)
    counter_share = sum(per_layer.get(m) or 0 for m in {r["module"] for r in own} if _counted(m))
    batch = own[0]["batch"] if own else 1
    ours = CostModel(model, own, []).macs(np.zeros(0))
    return int(round(macs - counter_share / batch + ours)), int(params)


class CostModel:
    """MACs per sample (as the counter divides by the batch) and params of ``model`` after removing
    ``removed[g]`` units from each of ``groups``."""

    def __init__(self, model: nn.Module, records: list[dict], groups: list[Group]):
        params = dict(model.named_parameters())
        self.batch = float(records[0]["batch"]) if records else 1.0
        self._var = {}          # (param, dim) -> variable id
        sizes = [1.0]           # variable 0 is the constant 1
        for name, p in params.items():
            for d, s in enumerate(p.shape):
                self._var[(name, d)] = len(sizes)
                sizes.append(float(s))
        canonical = {id(p): name for name, p in params.items()}
        for name, p in model.named_parameters(remove_duplicate=False):  # a tied parameter: one set of variables
            for d in range(p.dim()):
                self._var.setdefault((name, d), self._var[(canonical[id(p)], d)])
        self.sizes = np.array(sizes)
        # A[v, g]: entries of variable v removed per unit removed from group g
        self.A = np.zeros((len(sizes), len(groups)))
        for g, grp in enumerate(groups):
            for s in grp.slices:  # slices are distinct entries (see DepGraph._channel_group)
                self.A[self._var[(s.param, s.dim)], g] += 1
            for name, dim, per_unit in grp.partial:  # entries only some units own: their average
                self.A[self._var[(name, dim)], g] += per_unit
        self._by_name = {r["name"]: r for r in records}
        self._out_var = {}
        mac_terms = []
        for r in records:
            mac_terms += self._terms(r, params)
        param_terms = []
        for name, p in params.items():
            ids = [self._var[(name, d)] for d in range(p.dim())]
            param_terms.append((1.0, ids))
        self._mac = self._compile(mac_terms)
        self._par = self._compile(param_terms)

    # terms: (coef, [variable ids]) meaning coef * prod(x[ids])
    def _v(self, module_name, pname, dim):
        key = (f"{module_name}.{pname}", dim)
        return self._var.get(key, 0)

    def _producer_var(self, r, by_name):
        """Variable holding the channel count of this layer's input, and that count."""
        seen = set()
        name = r["producer"]
        while name and name not in seen:
            seen.add(name)
            v = self._out_var.get(name)
            if v:
                return v
            name = by_name.get(name, {}).get("producer")
        return 0

    def _terms(self, r, params):
        m, name = r["module"], r["name"]
        by_name = self._by_name
        numel = float(np.prod(r["in"]))
        out_numel = float(np.prod(r["out"]))
        terms = []
        if "custom" in r:
            terms = [(c, [self._var[key] for key in dims]) for c, dims in r["custom"]["terms"]]
            self._out_var[name] = self._var[r["custom"]["out"]]
        elif isinstance(m, nn.modules.conv._ConvNd):
            o_dim = 1 if m.transposed else 0
            vo, vi = self._v(name, "weight", o_dim), self._v(name, "weight", 1 - o_dim)
            spatial = float(np.prod(r["out"][2:])) * r["out"][0]
            k = float(np.prod(m.kernel_size))
            # counter: k * in * out / groups = k * weight.shape[0] * weight.shape[1]; a depthwise conv's
            # weight.shape[1] is 1 and its groups shrink with its channels, which the constant variable covers
            terms.append((k * spatial, [vo, vi]))
            if m.bias is not None:
                terms.append((spatial, [vo]))
            self._out_var[name] = vo
        elif isinstance(m, nn.Linear):
            vo, vi = self._v(name, "weight", 0), self._v(name, "weight", 1)
            rows = numel / r["in"][-1]
            terms.append((rows, [vo, vi]))
            if m.bias is not None:
                terms.append((1.0, [vo]))
            self._out_var[name] = vo
        elif isinstance(m, (nn.LayerNorm,) + _NORM):
            affine = getattr(m, "elementwise_affine", getattr(m, "affine", False))
            v = self._v(name, "weight", 0) if getattr(m, "weight", None) is not None else 0
            if not v:
                v = self._producer_var(r, by_name)
            self._out_var[name] = v
            terms.append(((2.0 if affine else 1.0) * numel / self._size(v), [v]))
        elif isinstance(m, nn.MultiheadAttention):
            # counter: E^2 (ql + kl + vl + ql) + E (ql + [bias] (ql + kl + vl) + ql + 2 ql kl) + heads ql kl
            e = self._v(name, "out_proj.weight", 0)
            q, k_, v_ = r["q_k_v"]
            li = 1 if m.batch_first else 0
            b = q[1 - li] if len(q) == 3 else 1
            ql, kl, vl = q[li], k_[li], v_[li]
            lin = ql + ql + 2 * ql * kl + ((ql + kl + vl) if m.in_proj_bias is not None else 0)
            terms.append((b * (ql + kl + vl + ql), [e, e]))
            terms.append((b * lin, [e]))
            terms.append((b * m.num_heads * ql * kl, [0]))
            self._out_var[name] = e
        elif isinstance(m, nn.LSTM):
            terms = self._lstm_terms(r)
        elif isinstance(m, _ACT + _POOL + (nn.Upsample,)):  # scale with the input's channel count
            v = self._producer_var(r, by_name)
            base = out_numel if isinstance(m, _ACT + (nn.Upsample,)) else numel
            self._out_var[name] = v
            terms.append((base / self._size(v), [v]))
        return terms

    def _lstm_terms(self, r):
        """torch-pruning's per-step count of an ``nn.LSTM``, per layer ``|W_ih| + |W_hh| + 10 H + |b_ih| + |b_hh|``
        (gate products, the element-wise gate arithmetic and the biases), once per time step of every sample
        (see ``macs_and_params``), twice if bidirectional."""
        m, name = r["module"], r["name"]
        factor = float(np.prod(r["in"][:-1])) * (2 if m.bidirectional else 1)  # batch x steps
        hidden = self._v(name, "weight_hh_l0", 1)
        terms = []
        for l in range(m.num_layers):
            for w in (f"weight_ih_l{l}", f"weight_hh_l{l}"):
                terms.append((factor, [self._v(name, w, 0), self._v(name, w, 1)]))
            terms.append((10 * factor, [hidden]))
            if m.bias:
                terms += [(factor, [self._v(name, f"bias_{k}_l{l}", 0)]) for k in ("ih", "hh")]
        self._out_var[name] = hidden
        return terms

    def _size(self, v):
        return self.sizes[v] if v else 1.0

    def _compile(self, terms):
        width = max(len(ids) for _, ids in terms) if terms else 1
        coef = np.array([c for c, _ in terms], dtype=np.float64)
        ids = np.zeros((len(terms), width), dtype=np.int64)
        for i, (_, t) in enumerate(terms):
            ids[i, :len(t)] = t
        return coef, ids

    def kept_sizes(self, removed: np.ndarray) -> np.ndarray:
        x = self.sizes - self.A @ removed
        x[0] = 1.0
        return x

    @staticmethod
    def _eval(compiled, x):
        coef, ids = compiled
        return float((coef * np.prod(x[ids], axis=1)).sum())

    def macs(self, removed: np.ndarray) -> float:
        return self._eval(self._mac, self.kept_sizes(removed)) / self.batch

    def params(self, removed: np.ndarray) -> float:
        return self._eval(self._par, self.kept_sizes(removed))


