"""Importance criteria: small swappable objects scoring the channel units of one group (higher = keep).

``importance("l2")`` returns a criterion; call it as ``crit(group, params) -> Tensor[group.units]``.
Channel groups are scored with torch-pruning's own classes on the group's torch-pruning group; attention
head-dimension groups (which torch-pruning's index mapping does not cover) and groups with a custom layer
(whose parameters torch-pruning's criteria skip) use the same formula on the group's slices. Criteria that
need gradients (``taylor``) say so with ``needs_grad``; ``prune`` then runs one calibration batch forward and
backward before scoring.

``tp_magnitude``/``tp_taylor`` are the torch-pruning-level versions (scoring torch-pruning groups) for the
routes that run torch-pruning's own pruners (``obs``, ``at_init``, ``sparse``); they add the entries of custom
layers, which torch-pruning's criteria skip.
"""
from __future__ import annotations

import torch

from ..depgraph import Group, GroupMagnitudeImportance, GroupTaylorImportance, TPImportance, merge_pruners


def _lamp(scores: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al., 2021): score / sum of all scores at least as large, within the group."""
    s, order = scores.sort()
    tail = s.flip(0).cumsum(0).flip(0)
    out = torch.empty_like(scores)
    out[order] = s / tail.clamp_min(1e-12)
    return out


def _to_units(imp: torch.Tensor, group: Group) -> torch.Tensor:
    """Average a per-root-channel score over the channels of each unit (grouped convs, heads)."""
    if group.unit_roots is None or imp.numel() == group.units:
        return imp
    return imp[group.unit_roots].mean(1)


def _slice_score(group: Group, params: dict, fn) -> torch.Tensor:
    total = torch.zeros(group.units)
    for s in group.slices:
        w = params[s.param]
        sel = fn(s.param, w).index_select(s.dim, s.idxs.to(w.device)).movedim(s.dim, 0)
        total += sel.reshape(group.units, -1).sum(1).float().cpu()
    return total / max(len({s.param for s in group.slices}), 1)


class Importance:
    name = "base"
    needs_grad = False

    def __call__(self, group: Group, params: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}()"


class Magnitude(Importance):
    """Group Lp magnitude (DepGraph's default criterion): mean over coupled layers of sum |w|^p, normalised by the
    group's mean (``l2``, ``l1``) or maximum (``l2_max``, DepGraph's published CIFAR recipe with global ranking)."""

    def __init__(self, p: int = 2, normalizer: str | None = "mean"):
        self.p, self.normalizer = p, normalizer
        self.name = f"l{p}_max" if normalizer == "max" else f"l{p}"  # the name it is asked for by, in reports
        self._tp = GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer=None)

    def raw(self, group: Group, params) -> torch.Tensor:
        imp = self._tp(group.tp_group) if group.tp_group is not None and not group.custom else None
        if imp is None:
            return _slice_score(group, params, lambda n, w: w.detach().abs().pow(self.p))
        return _to_units(imp.float().cpu(), group)

    def __call__(self, group, params):
        imp = self.raw(group, params)
        if self.normalizer == "mean":
            imp = imp / imp.mean().clamp_min(1e-12)
        elif self.normalizer == "max":  # DepGraph's CIFAR recipe: comparable across groups for global ranking
            imp = imp / imp.max().clamp_min(1e-12)
        return imp


class LAMP(Magnitude):
    """LAMP scores on the group L2 magnitude: comparable across layers for global pruning."""

    def __init__(self, p: int = 2):
        super().__init__(p, normalizer=None)
        self.name = "lamp"

    def __call__(self, group, params):
        return _lamp(self.raw(group, params))


class Taylor(Importance):
    """Group first-order Taylor |w * dL/dw| (Molchanov et al., 2019); needs gradients from one batch."""

    name = "taylor"
    needs_grad = True

    def __init__(self):
        self._tp = GroupTaylorImportance(group_reduction="mean", normalizer=None)

    def __call__(self, group, params):
        imp = None
        if group.tp_group is not None and not group.custom:
            imp = self._tp(group.tp_group)
        if imp is None:
            def wg(n, w):
                if w.grad is None:
                    raise ValueError(f"taylor importance needs gradients; {n} has none")
                return (w.detach() * w.grad).abs()
            imp = _slice_score(group, params, wg)
        imp = _to_units(imp.float().cpu(), group)
        return imp / imp.mean().clamp_min(1e-12)


class Random(Importance):
    """Uniform random scores (a baseline); seeded for reproducibility."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, group, params):
        return torch.rand(group.units, generator=self.generator)


class _TPWithCustomLayers(TPImportance):
    """A torch-pruning group criterion (summed over layers) plus, for every layer pruned by a custom pruner, the
    per-entry score ``entry(w)`` summed over what each channel owns (``param_slices``); mean-normalised, so
    the ranking equals torch-pruning's mean-reduced, mean-normalised default wherever it sees every layer."""

    def __init__(self, base: TPImportance, entry, normalizer: str | None = "mean", pruners=None):
        self.base, self.entry, self.normalizer = base, entry, normalizer
        self.pruners = merge_pruners(pruners)

    @torch.no_grad()
    def __call__(self, group):
        imp = self.base(group)
        n_root = len(group[0].idxs)
        for i, (dep, idxs) in enumerate(group):
            layer, root = dep.layer, group[i].root_idxs
            pruner = self.pruners.get(type(layer))
            if pruner is None or root is None or any(r is None for r in root):
                continue
            t = torch.as_tensor(list(idxs), dtype=torch.long)
            local = torch.zeros(len(t))
            for pname, dim, maps in pruner.param_slices(layer, dep.pruning_fn == pruner.prune_out_channels):
                w = self.entry(layer.get_parameter(pname))
                for f in maps:
                    local += w.index_select(dim, f(t)).movedim(dim, 0).reshape(len(t), -1).sum(1).float().cpu()
            part = torch.zeros(n_root).scatter_add_(0, torch.as_tensor(list(root), dtype=torch.long), local)
            imp = part if imp is None else imp.float().cpu() + part
        if imp is not None and self.normalizer == "mean":
            imp = imp / imp.mean().clamp_min(1e-12)
        return imp


def tp_magnitude(p: int = 2, pruners=None) -> TPImportance:
    """torch-pruning's group Lp magnitude (``GroupMagnitudeImportance``) that also sees custom layers."""
    base = GroupMagnitudeImportance(p=p, group_reduction="sum", normalizer=None)
    return _TPWithCustomLayers(base, lambda w: w.detach().abs().pow(p), pruners=pruners)


def tp_taylor(pruners=None) -> TPImportance:
    """torch-pruning's group Taylor ``|w * dL/dw|`` (``GroupTaylorImportance``) that also sees custom layers."""
    base = GroupTaylorImportance(group_reduction="sum", normalizer=None)
    entry = lambda w: (w.detach() * w.grad).abs() if w.grad is not None else torch.zeros_like(w)  # noqa: E731
    return _TPWithCustomLayers(base, entry, pruners=pruners)


_CRITERIA = {
    "l2": lambda **kw: Magnitude(p=2, **kw),
    "l2_max": lambda **kw: Magnitude(p=2, normalizer="max", **kw),
    "l1": lambda **kw: Magnitude(p=1, **kw),
    "lamp": lambda **kw: LAMP(**kw),
    "taylor": lambda **kw: Taylor(**kw),
    "random": lambda **kw: Random(**kw),
}


def available() -> list[str]:
    return sorted(_CRITERIA)


def importance(name: str | Importance, **kwargs) -> Importance:
    """The criterion called ``name`` (l2, l2_max, l1, lamp, taylor, random); an ``Importance`` passes through."""
    if isinstance(name, Importance):
        return name
    key = str(name).lower()
    if key not in _CRITERIA:
        raise ValueError(f"unknown importance {name!r}; choose one of {', '.join(available())}")
    return _CRITERIA[key](**kwargs)
