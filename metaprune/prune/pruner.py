"""``prune``: remove channels in place until a MACs (or parameter) target is met, in one shot.

Steps: trace the layers' shapes and find the classifier -> DepGraph groups -> importance per unit ->
order every removable unit (per-group ratio order for local pruning, normalised score for global) ->
bisect on how many units to remove using the analytic cost model (no pruned copies, no recounting) ->
remove them -> count the real MACs and params once.

Layers torch-pruning has no rule for are pruned by their registered custom pruner
(``metaprune.layers.register_layer``, or ``customized_pruners=``); see ``cost`` for how their MACs count.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cost import CostModel, macs_and_params, trace_modules
from ..depgraph import DepGraph, check_attention_unit, merge_pruners
from ..utils import preserve_mode
from .importance import Importance, importance as make_importance
from .ranking import ATTENTION_RULE
from .safety import PruningFailed, check_output_shapes, failing_module, output_shapes, unchanged_on_error

# how many failing layers (or layer types) one prune may keep whole before it gives up
MAX_KEPT_WHOLE = 8


class UnreachableTarget(ValueError):
    """The target cannot be reached without removing a whole layer; the message names the most reachable."""


@dataclass
class PruneResult:
    base_macs: int            # torch-pruning's counter plus custom layers (cost.macs_and_params)
    pruned_macs: int
    base_params: int
    pruned_params: int
    speedup: float            # base MACs / pruned MACs (measured)
    param_ratio: float        # base params / pruned params (measured)
    ratio: float              # fraction of prunable channel units removed
    target: dict
    importance: str
    global_pruning: bool
    round_to: int | None
    protected: list[str]
    channels: dict = field(default_factory=dict)  # group root -> [units before, after]
    removed: dict = field(default_factory=dict)   # group root -> removed unit ids (in the original model)
    predicted_macs: float = 0.0
    seconds: float = 0.0
    kept_whole: list = field(default_factory=list)  # failing layers whose channel groups were left whole
    attention_unit: str = "auto"  # what one unit of an attention group removed: auto, dim or head

    def to_dict(self) -> dict:
        return asdict(self)


def batch_gradients(model: nn.Module, batch, train: bool = False) -> None:
    """Fill ``.grad`` with the cross-entropy gradient on ``batch`` ``(inputs, targets)``, in eval mode, or in
    train mode (``train``: batch statistics, for an untrained network) with every buffer restored afterwards.
    The model's train/eval mode is kept."""
    x, y = batch
    buffers = {k: v.clone() for k, v in model.named_buffers()} if train else {}
    with preserve_mode(model), torch.enable_grad():
        model.train(train).zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        for k, v in model.named_buffers():
            if k in buffers:
                v.copy_(buffers[k])


def _calibrate_grads(model: nn.Module, calibration) -> None:
    """One forward/backward on a calibration batch ``(inputs, targets)`` so criteria can read ``.grad``."""
    if calibration is None:
        raise ValueError("importance 'taylor' needs a calibration batch (inputs, targets) for its gradients")
    batch_gradients(model, calibration)


def _chunks(order: np.ndarray, units: int, step: int) -> list[tuple[int, int]]:
    """(start, end) positions in ascending-importance ``order`` that can be removed one after another so
    that the kept count stays a multiple of ``step`` and at least ``step``."""
    if units <= step:
        return []
    out, start = [], 0
    first = units % step
    if first:
        out.append((0, first))
        start = first
    while units - start > step:
        out.append((start, start + step))
        start += step
    return out


def plan_order(scores: list[torch.Tensor], groups, round_to: int | None, global_pruning: bool):
    """All removable chunks of all groups in the order they are removed.

    Returns rows ``(key, group id, chunk size, unit ids)`` sorted by key: local pruning keys a chunk by the
    fraction of its group removed once it goes (one ratio for every group), global pruning by the chunk's
    largest score. A group smaller than ``round_to`` (or its head count) is left alone. A group of whole attention
    heads keeps a head count whose width (heads x head dim) is a multiple of ``round_to``, and at least one head.
    """
    rows = []
    for g, (imp, grp) in enumerate(zip(scores, groups)):
        r = max(1, round_to or 1)
        if grp.attention is not None and grp.attention.unit == "head":
            r //= np.gcd(r, grp.attention.head_dim)
        step = int(np.lcm(r, grp.multiple))
        order = torch.argsort(imp, stable=True).numpy()
        for s, e in _chunks(order, grp.units, step):
            key = e / grp.units if not global_pruning else float(imp[order[e - 1]])
            rows.append((key, g, e - s, order[s:e]))
    rows.sort(key=lambda r: (r[0], r[1]))
    return rows


def prune(model: nn.Module, example_inputs: torch.Tensor, target_speedup: float | None = None,
          target_params: float | None = None, importance: str | Importance = "l2", global_pruning: bool | str = False,
          round_to: int | None = None, ignored_layers=(), calibration=None, protect_output: bool = True,
          seed: int = 0, customized_pruners: dict | None = None, keep_failing_layers: bool = True,
          attention_unit: str = "auto") -> PruneResult:
    """Prune ``model`` in place to ``target_speedup`` (base MACs / pruned MACs) or ``target_params``
    (base params / pruned params) and return the measured result.

    ``importance``: l2 (default), l1, lamp, taylor (needs ``calibration=(inputs, targets)``), random, or an
    ``Importance`` object. ``global_pruning``: rank units across layers instead of one ratio for all;
    ``"attention"``: globally where the model has attention groups (a transformer), per layer otherwise
    (:data:`ATTENTION_RULE`; the result records which).
    ``round_to``: kept channel counts are multiples of it. ``ignored_layers``: module names whose output
    channels stay; the classifier (the layer producing the model output) is protected automatically.
    ``customized_pruners``: ``{layer type: pruner}`` for layer types torch-pruning has no rule for, on top of
    those registered with ``metaprune.layers.register_layer``. ``attention_unit``: what attention pruning removes,
    ``dim`` (slot d of every head: head count kept, head dim shrinks), ``head`` (whole heads: head dim kept) or
    ``auto`` (head dims, whole heads where a rotary embedding or grouped-query attention needs them; ``dim`` there
    is refused).
    Raises ``ValueError`` when the target is <= 1 or cannot be reached without removing a whole layer
    (the message names the maximum reachable value). All or nothing: if pruning fails (also when the pruned
    model's output shapes differ from the original's), ``model`` is restored exactly and
    :class:`~metaprune.prune.safety.PruningFailed` names the cause. Groups whose channel mapping torch-pruning
    cannot follow are left alone and listed in ``protected``.

    ``keep_failing_layers``: when the pruned model fails inside a layer (its forward reads a width pruning changed:
    a head count, split sizes; or a pruning rule raised on it), the model is restored and pruned again with every
    channel group through that layer left whole (through every layer of its type when it is a block with a forward
    of its own), up to ``MAX_KEPT_WHOLE`` times, with a warning each time; the layers are listed in ``kept_whole``
    and ``protected``. ``False``: the first failure raises.
    """
    t0 = time.perf_counter()
    if (target_speedup is None) == (target_params is None):
        raise ValueError("give exactly one of target_speedup or target_params")
    target = float(target_speedup if target_speedup is not None else target_params)
    what = "speedup" if target_speedup is not None else "params"
    if not np.isfinite(target) or target <= 1:
        raise ValueError(f"target {what}={target} must be > 1 (base / pruned); 1 means no pruning")
    if round_to is not None and int(round_to) < 1:
        raise ValueError(f"round_to={round_to} must be a positive integer or null")
    check_attention_unit(attention_unit)
    if isinstance(global_pruning, str) and global_pruning != ATTENTION_RULE:  # other values count as a flag
        raise ValueError(f"global_pruning={global_pruning!r} must be true, false or 'attention' (global ranking for "
                         "networks with attention layers, per-layer ranking for the others)")
    crit = make_importance(importance, **({"seed": seed} if importance == "random" else {}))
    example_inputs = example_inputs.to(next(model.parameters()).device)
    if isinstance(example_inputs, torch.Tensor) and example_inputs.dim() > 1 and example_inputs.shape[0] > 1:
        example_inputs = example_inputs[:1]  # structure and MACs per example; a batch adds nothing but cost

    kept, notes, last = [], [], None
    while True:
        try:
            with unchanged_on_error(model):
                res = _prune(model, example_inputs, target, what, crit, global_pruning, round_to, ignored_layers,
                             calibration, protect_output, customized_pruners, t0, kept, attention_unit)
        except _NoGroupThrough:  # leaving the layer's groups whole changes nothing: the failure stands
            raise last from None
        except PruningFailed as e:
            layer = failing_module(model, e.__cause__) if keep_failing_layers else None
            if layer is None or layer in kept or len(kept) >= MAX_KEPT_WHOLE:
                raise
            kept.append(layer)
            notes.append(f"{e}; pruned again with the channel groups through {layer} "
                         f"({type(model.get_submodule(layer)).__name__}) left whole")
            last = e
            continue
        for note in notes:
            warnings.warn(note, stacklevel=2)
        return res


class _NoGroupThrough(PruningFailed):
    """No channel group reaches the layer a pruned model failed in: leaving its groups whole cannot help."""


def _leave_whole(model: nn.Module, groups: list, kept: list[str]) -> list:
    """``groups`` without those reaching a kept layer (a parameter entry or a cut in it): each kept layer, and every
    layer of its type when it is a block with children (its own forward reads the widths, so every instance does)."""
    modules = dict(model.named_modules())
    blocks = {type(modules[n]) for n in kept if list(modules[n].children())}
    names = set(kept) | {n for n, m in modules.items() if n and type(m) in blocks}
    prefixes = tuple(f"{n}." for n in names)
    inside = {id(sub) for n in names for sub in modules[n].modules()}
    return [g for g in groups if not any(sl.param.startswith(prefixes) for sl in g.slices)
            and not any(id(dep.target.module) in inside for dep, _, _ in g.cuts)]


def _prune(model, example_inputs, target, what, crit, global_pruning, round_to, ignored_layers, calibration,
           protect_output, customized_pruners, t0, kept, attention_unit) -> PruneResult:
    shapes = output_shapes(model, example_inputs)
    pruners = merge_pruners(customized_pruners)
    records, heads = trace_modules(model, example_inputs, pruners)
    dg = DepGraph(model, example_inputs, list(ignored_layers), pruners, protect_outputs=protect_output,
                  attention_unit=attention_unit)
    # the layers writing the traced outputs (isinstance, so library subclasses count); the shape-matched
    # classifier of the op counter's trace only where the graph names none
    outputs = (dg.output_layers or heads) if protect_output else []
    protected = list(dict.fromkeys(outputs + list(ignored_layers)))
    if protect_output and not dg.output_layers and heads:
        dg = DepGraph(model, example_inputs, protected, pruners, attention_unit=attention_unit)
    protected += [n for n in dg.fixed if n not in protected]  # groups DepGraph could not map are left alone
    if kept:  # layers a pruned model failed in: every group with an entry in them stays whole
        whole = _leave_whole(model, dg.groups, kept)
        if len(whole) == len(_leave_whole(model, dg.groups, kept[:-1])):
            raise _NoGroupThrough(kept[-1])
        dg.groups = whole
        protected += [n for n in kept if n not in protected]
    groups = dg.groups
    if not groups:
        raise ValueError("nothing to prune: the model has no prunable channel groups outside the protected layers")
    if global_pruning == ATTENTION_RULE:
        global_pruning = any(g.attention is not None for g in groups)
    base_macs, base_params = macs_and_params(model, example_inputs, pruners)
    cost = CostModel(model, records, groups)

    if crit.needs_grad:
        _calibrate_grads(model, calibration)
    params = dg.params()
    scores = [crit(g, params).detach().float().cpu() for g in groups]
    if crit.needs_grad:
        model.zero_grad(set_to_none=True)

    rows = plan_order(scores, groups, round_to, global_pruning)
    gid = np.array([r[1] for r in rows], dtype=np.int64)
    size = np.array([r[2] for r in rows], dtype=np.float64)
    n_groups = len(groups)

    def removed_at(k: int) -> np.ndarray:
        return np.bincount(gid[:k], weights=size[:k], minlength=n_groups)

    measure = cost.macs if what == "speedup" else cost.params
    base_true = float(base_macs if what == "speedup" else base_params)
    base_est = measure(np.zeros(n_groups))

    def reached(k: int) -> float:
        # layers the cost model does not know count as constant: only the modelled saving is subtracted
        return base_true / (base_true - (base_est - measure(removed_at(k))))

    k_max = len(rows)
    max_reach = reached(k_max) if k_max else 1.0
    if target > max_reach * (1 + 1e-9):
        raise UnreachableTarget(
            f"target {what}={target:g} is unreachable without removing a whole layer: the most this model "
            f"reaches is about {max_reach:.2f}x (every group down to {max(1, round_to or 1)} channel(s)"
            f"{', round_to=' + str(round_to) if round_to else ''}, protected: {', '.join(protected) or 'none'})")
    lo, hi = 0, k_max  # reached(lo) < target <= reached(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if reached(mid) >= target:
            hi = mid
        else:
            lo = mid
    k = hi if abs(reached(hi) / target - 1) <= abs(reached(lo) / target - 1) else lo
    removed = {}
    for key, g, n, units in rows[:k]:
        removed.setdefault(g, []).append(torch.as_tensor(units))
    removed = {g: torch.cat(u) for g, u in removed.items()}
    before = {grp.root: grp.units for grp in groups}
    predicted = base_macs - (cost.macs(np.zeros(n_groups)) - cost.macs(removed_at(k)))
    dg.apply(removed)
    del dg
    check_output_shapes(model, example_inputs, shapes)
    pruned_macs, pruned_params = macs_and_params(model, example_inputs, pruners)
    total_units = sum(g.units for g in groups)
    return PruneResult(
        base_macs=base_macs, pruned_macs=pruned_macs, base_params=base_params, pruned_params=pruned_params,
        speedup=base_macs / max(pruned_macs, 1), param_ratio=base_params / max(pruned_params, 1),
        ratio=float(sum(len(u) for u in removed.values()) / max(total_units, 1)),
        target={what: target}, importance=getattr(crit, "name", type(crit).__name__),
        global_pruning=bool(global_pruning), round_to=round_to, protected=protected,
        channels={g.root: [before[g.root], before[g.root] - len(removed.get(i, []))] for i, g in enumerate(groups)},
        removed={groups[g].root: sorted(u.tolist()) for g, u in removed.items()},
        predicted_macs=predicted, seconds=time.perf_counter() - t0, kept_whole=list(kept),
        attention_unit=attention_unit)
