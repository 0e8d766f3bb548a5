"""Analytic MACs and parameter counts of a pruning plan, without touching the model.

One forward pass records every counted layer's input/output shapes. A layer's cost is then a sum of
terms ``coef * x_a * x_b`` where ``x`` are the *kept sizes* of parameter dimensions (conv MACs =
k*H*W*out*in/groups = k*H*W * weight.shape[0] * weight.shape[1]). A plan removes ``r_g`` units from group ``g``;
every dimension's kept size is ``size - sum_g r_g * (slices of that dim in g)``. The formulas mirror
torch-pruning's op counter (``metaprune.metrics.macs_and_params``), so evaluating thousands of plans
costs microseconds each instead of a pruned copy and a forward pass. Layers with no parameters (ReLU,
pooling) scale with the layer that produced their input; layers the model does not know are constant.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .depgraph import Group

_ACT = (nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.GELU)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
_COUNTED = (nn.modules.conv._ConvNd, nn.Linear, nn.LayerNorm, nn.MultiheadAttention, nn.Upsample) + _ACT + _POOL + _NORM


def trace_modules(model: nn.Module, example_inputs):
    """One no-grad forward recording (name, module, input shape, output shape, producer) of counted layers.

    Returns ``(records, output_layers)``; ``output_layers`` are the Conv/Linear layers whose output is
    the model output (the classifier to protect).
    """
    records, produced, last_by_shape = [], {}, {}

    def hook(name):
        def fn(mod, inp, out):
            x = inp[0] if isinstance(inp, tuple) and inp else inp
            if isinstance(out, tuple):
                out = out[0]
            if not isinstance(x, torch.Tensor) or not isinstance(out, torch.Tensor):
                return
            producer = produced.get(x.data_ptr()) or last_by_shape.get(tuple(x.shape))
            records.append({"name": name, "module": mod, "in": tuple(x.shape), "out": tuple(out.shape),
                            "producer": producer, "q_k_v": [tuple(t.shape) for t in inp[:3]]
                            if isinstance(mod, nn.MultiheadAttention) else None})
            produced[out.data_ptr()] = name
            last_by_shape[tuple(out.shape)] = name
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if n and isinstance(m, _COUNTED)]
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(example_inputs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    outs = out if isinstance(out, (tuple, list)) else list(out.values()) if isinstance(out, dict) else [out]
    by_name = {r["name"]: r for r in records}
    heads = []
    for o in outs:
        if isinstance(o, torch.Tensor):
            n = produced.get(o.data_ptr())
            if n and isinstance(by_name[n]["module"], (nn.Linear, nn.modules.conv._ConvNd)):
                heads.append(n)
    if not heads:
        lin = [r["name"] for r in records if isinstance(r["module"], (nn.Linear, nn.modules.conv._ConvNd))]
        heads = lin[-1:]
    return records, sorted(set(heads))


class CostModel:
    """MACs and params of ``model`` after removing ``removed[g]`` units from each of ``groups``."""

    def __init__(self, model: nn.Module, records: list[dict], groups: list[Group]):
        params = dict(model.named_parameters())
        self._var = {}          # (param, dim) -> variable id
        sizes = [1.0]           # variable 0 is the constant 1
        for name, p in params.items():
            for d, s in enumerate(p.shape):
                self._var[(name, d)] = len(sizes)
                sizes.append(float(s))
        self.sizes = np.array(sizes)
        # A[v, g]: entries of variable v removed per unit removed from group g
        self.A = np.zeros((len(sizes), len(groups)))
        for g, grp in enumerate(groups):
            seen = set()
            for s in grp.slices:
                # a grouped conv lists one slice per group for the same entries: count those once
                key = (s.param, s.dim, tuple(torch.as_tensor(s.idxs).flatten().tolist()))
                if key in seen:
                    continue
                seen.add(key)
                self.A[self._var[(s.param, s.dim)], g] += 1
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
        if isinstance(m, nn.modules.conv._ConvNd):
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
        else:  # activations, pooling, upsampling: scale with the input's channel count
            v = self._producer_var(r, by_name)
            base = out_numel if isinstance(m, _ACT + (nn.Upsample,)) else numel
            self._out_var[name] = v
            terms.append((base / self._size(v), [v]))
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
        return self._eval(self._mac, self.kept_sizes(removed))

    def params(self, removed: np.ndarray) -> float:
        return self._eval(self._par, self.kept_sizes(removed))


