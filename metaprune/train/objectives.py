"""Training objectives on the transformed weights of a network: DepGraph's group regulariser and the
meta-training loss (task loss of the rewritten network + group regulariser, optionally + the task loss of
the network l2 pruning would leave).

    reg     = sum_groups sum_units gamma_u * ||w_u||_2       # DepGraph group L2 on the transformed weights
    gamma_u = alpha ** ((max - imp_u) / (max - min))       # per group; imp = detached unit norms

``kind="relative"`` divides each group's term by its total norm, so shrinking every weight no longer pays;
``kind="sq_l2"`` is the published MetaPruning / GroupNormPruner pull ``sum gamma_u * ||w_u||^2 / 2``, whose gradient
is ``gamma_u * w`` on every coupled slice (strong on weak units, linear in the weight, never vanishing).
torch-pruning's own sparse-learning regulariser (on a network's weights during training) is
``metaprune.prune.sparse``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..depgraph import group_norms
from ..graph import graph_params
from ..utils import preserve_mode


def zero_weakest(params: dict, groups, removed, temperature: float = 0.0) -> dict:
    """``params`` with the ``removed[i]`` lowest-norm units of group ``i`` zeroed in every coupled parameter:
    the network l2 pruning would leave (zeroing a unit's outputs and the next layer's inputs removes it), kept
    differentiable in the surviving weights.

    ``temperature > 0``: the hard mask stays in the forward pass, but its gradient reaches every unit's norm
    (straight-through, through ``sigmoid((norm / max - boundary) / temperature)``, the boundary half-way between
    the last unit removed and the first kept), so the loss can move units across the pruning boundary."""
    out = dict(params)
    for g, k in zip(groups, removed):
        if k <= 0:
            continue
        norms = g.norms(out)
        weak = norms.detach().argsort()[:k]
        keep = torch.ones_like(norms).index_fill(0, weak, 0.0)
        if temperature > 0:
            rel = norms / norms.detach().max().clamp_min(1e-12)
            ranked = rel.detach().sort().values
            boundary = (ranked[k - 1] + ranked[k]) / 2 if k < len(ranked) else ranked[-1]
            soft = torch.sigmoid((rel - boundary) / temperature)
            keep = keep + (soft - soft.detach())  # exactly the hard mask forward
        for s in g.slices:
            w = out[s.param]
            full = torch.ones(w.shape[s.dim], dtype=w.dtype, device=w.device)
            full = full.index_copy(0, s.idxs.to(w.device), keep.to(w.dtype))
            shape = [1] * w.dim()
            shape[s.dim] = -1
            out[s.param] = w * full.view(shape)
    return out


REGULARISERS = ("l2", "relative", "sq_l2")


def group_regulariser(params: dict, groups, alpha: float, kind: str = "l2") -> tuple[torch.Tensor, dict]:
    """``sum_g sum_u gamma_u ||w_u||_2`` over the channel units ``u`` of every group ``g`` (differentiable in
    ``params``), with DepGraph's adaptive ``gamma_u = alpha ** ((max - imp_u) / (max - min))`` per group.

    ``kind="relative"`` divides each group's term by ``sum_u ||w_u||_2`` (not detached): the penalty no longer
    falls when all weights shrink together, only when the group's norm concentrates in its strongest units.
    ``kind="sq_l2"``: ``sum_u gamma_u ||w_u||_2^2 / 2``, the reference's adaptive squared-L2 pull.
    """
    if kind not in REGULARISERS:
        raise ValueError(f"regulariser {kind!r} is unknown: one of {', '.join(REGULARISERS)}")
    total = next(iter(params.values())).new_zeros(())
    small, units, gammas = 0, 0, 0.0
    for g in groups:
        norm = (group_norms(g, params, 2).pow(2) + 1e-12).sqrt()
        imp = norm.detach()
        span = (imp.max() - imp.min()).clamp_min(1e-12)
        gamma = alpha ** ((imp.max() - imp) / span)
        if kind == "sq_l2":
            total = total + 0.5 * (gamma * norm.pow(2)).sum()
        else:
            term = (gamma * norm).sum()
            total = total + (term / norm.sum() if kind == "relative" else term)
        small += int((imp < 0.05 * imp.max()).sum())
        units += imp.numel()
        gammas += float(gamma.sum())
    stats = {"small_units": small / max(units, 1), "gamma_mean": gammas / max(units, 1), "units": units}
    return total, stats


def _task_losses(model, params, pruned, batches):
    """Mean cross-entropy of ``model`` run with ``params`` (and with ``pruned``, when given) over ``batches``,
    with the correct counts: ``(task, task_pruned, correct, correct_pruned, seen)``."""
    task = task_p = 0.0
    correct = correct_p = seen = 0
    for x, y in batches:
        out = torch.func.functional_call(model, params, (x,))
        task = task + F.cross_entropy(out, y) / len(batches)
        correct += int((out.argmax(1) == y).sum())
        seen += len(y)
        if pruned is not None:
            out_p = torch.func.functional_call(model, pruned, (x,))
            task_p = task_p + F.cross_entropy(out_p, y) / len(batches)
            correct_p += int((out_p.argmax(1) == y).sum())
    return task, task_p, correct, correct_p, seen


def meta_loss(metanet, case, batches, lam: float, alpha: float, reg_kind: str = "l2",
              prune_loss: float = 0.0, recount=None, task_weight: float = 1.0,
              batch_stats: bool = False, mask_temperature: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Task loss of the rewritten network (times ``task_weight``), averaged over ``batches`` (a list of
    ``(x, y)``; the metanetwork runs once), plus ``lam`` times the group regulariser (plus ``prune_loss`` times
    the task loss of the rewritten network with its weakest units zeroed).

    ``case``: a ``metaprune.metatrain.NetCase`` (the network, its graph, groups, buffer names and, for
    ``prune_loss``, the units pruning removes per group). ``recount``: a function of the rewritten weights giving
    those counts afresh (``prune_mask="dynamic"``), used instead of the case's. ``batch_stats``: batch norms
    normalise with the batch's statistics (what recalibrating them after the rewrite gives) instead of the zoo
    network's stored ones, which the rewrite leaves stale; the stored ones are never written.
    ``mask_temperature``: see :func:`zero_weakest` (0: no gradient to which units are removed)."""
    new_x, new_attr = metanet(case.graph)
    params = graph_params(case.graph.with_features(x=new_x, edge_attr=new_attr))
    params = {k: (v.detach().clone() if k in case.buffers else v) for k, v in params.items()}
    if batch_stats:  # running-statistic updates land in copies, never in the zoo network or its graph
        params.update({k: b.clone() for k, b in case.model.named_buffers() if k not in params})
    removed = recount(state=params) if recount is not None and prune_loss > 0 else case.removed
    pruned = (zero_weakest(params, case.groups, removed, mask_temperature) if prune_loss > 0 and removed is not None
              else None)
    with preserve_mode(case.model):
        for m in case.model.modules():
            if batch_stats and isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
        task, task_p, correct, correct_p, seen = _task_losses(case.model, params, pruned, batches)
    reg, stats = group_regulariser(params, case.groups, alpha, reg_kind)
    change = (new_attr - case.graph.edge_attr).norm() / case.graph.edge_attr.norm().clamp_min(1e-12)
    stats.update(task=task.item(), reg=reg.item(), acc=correct / max(seen, 1), rel_change=change.item())
    loss = task_weight * task + lam * reg
    if pruned is not None:
        loss = loss + prune_loss * task_p
        stats.update(pruned_task=task_p.item(), pruned_acc=correct_p / max(seen, 1))
    return loss, stats
