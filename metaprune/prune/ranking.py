"""Global or per-layer ranking, chosen per network on val (``prune.global_pruning=val``).

Which ranking prunes a network better depends on the network: on the Fashion-MNIST zoo, per-layer ranking is
6-10 points ahead of global ranking on the CNNs after the finetune and 15-25 points behind on the ViTs (README,
"Where the metanetwork stands"). So the choice is made where the answer is, per network and target: the network is
pruned both ways (on copies), each copy has its batch-norm statistics re-estimated on a few train batches (on a
further copy: right after pruning the stored statistics no longer fit the thinned layers and every candidate sits
near chance), the two are scored on **val**, and the better ranking wins (a tie keeps global ranking, the published
recipe). With a ``margin``, global ranking must beat per-layer ranking by at least that much to be kept: per-layer
ranking is the safe default (it thins every layer alike and never empties one, where global ranking can collapse a
CNN), and right after pruning to 4x and beyond both candidates often score near chance, where a small lead says
nothing (README, "A ranking choice with a margin"). What is returned is the winning copy as pruned, with its
stored statistics: the finetune that follows is the one a fixed ranking gets. The choice costs forward passes
only, no training step; with ``probe_steps`` (the scorer's) each candidate's copy also trains that many SGD steps
and is scored by its val loss, meant for 4x and beyond, where every candidate's val accuracy right after pruning
sits near chance; it is off by default because a very thin candidate can diverge in those few steps and still
finish best (README, "Networks no zoo holds").
"""
from __future__ import annotations

import copy
from typing import Callable

import torch.nn as nn

CHOICES = {"global": True, "per_layer": False}
# prune.global_pruning="attention": global ranking for networks with attention groups (transformers), per-layer
# ranking for the others, decided by ``prune`` from the DepGraph groups. Selected on the Fashion-MNIST zoo's meta-train
# and meta-val networks (README, "A ranking rule by architecture"): there per-layer ranking finished ahead on the CNNs,
# where global ranking can all but empty a layer, and global ranking on the ViTs, whose attention and MLP widths sit
# on residual branches.
ATTENTION_RULE = "attention"


def prune_ranked_on_val(model: nn.Module, prune_fn: Callable[[nn.Module, bool], object],
                        score: Callable[[nn.Module], float], margin: float = 0.0) -> tuple[nn.Module, object, dict]:
    """Prune ``model`` with global and with per-layer ranking and keep the one that ``score`` rates higher;
    global ranking only when it is ahead by at least ``margin`` (in the score's units: 0.05 = 5 points of val
    accuracy; 0: a tie keeps global ranking).

    ``prune_fn(network, global_pruning)`` prunes ``network`` in place and returns its result (a
    :class:`~metaprune.prune.PruneResult`); ``score(network)`` rates it on val, on a copy
    (:func:`metaprune.train.ranking_scorer`: val accuracy with batch norms re-estimated, or val loss after a few SGD
    steps; its ``key`` and ``higher_is_better`` say which). ``model`` itself is left untouched. Returns (the chosen
    pruned copy, its result, ``{"chosen": "global" | "per_layer", <score.key>: {ranking: score}, "unreachable":
    {ranking: why}}``). A ranking that cannot reach the target (``ValueError``) drops out; when both fail, the global
    one's error is raised."""
    candidates, errors, scores = {}, {}, {}
    for name, global_pruning in CHOICES.items():
        net = copy.deepcopy(model)
        try:
            result = prune_fn(net, global_pruning)
        except ValueError as e:
            errors[name] = e
            continue
        scores[name] = float(score(net))
        candidates[name] = (net, result)
    if not candidates:
        raise errors["global"]
    chosen = choose(scores, margin, getattr(score, "higher_is_better", True))
    net, result = candidates[chosen]
    record = {"chosen": chosen, getattr(score, "key", "val_acc"): scores,
              "unreachable": {n: str(e) for n, e in errors.items()}}
    return net, result, {**record, "margin": margin} if margin else record


def choose(scores: dict[str, float], margin: float = 0.0, higher_is_better: bool = True) -> str:
    """The ranking kept from ``scores`` ({ranking: score}; either may be missing, not both): global ranking when
    it is ahead of per-layer ranking by at least ``margin`` (0: a tie keeps global), else per-layer."""
    if "per_layer" not in scores or "global" not in scores:
        return next(iter(scores))
    lead = scores["global"] - scores["per_layer"]
    return "global" if (lead if higher_is_better else -lead) >= margin else "per_layer"


def is_margin(margin) -> bool:
    """Whether ``margin`` is a valid ranking margin: a number in [0, 1) (a fraction of val accuracy)."""
    return not isinstance(margin, bool) and isinstance(margin, (int, float)) and 0 <= margin < 1


def check_margin(margin, key: str = "ranking_margin") -> float:
    """A ranking margin (:func:`is_margin`), else one ``ValueError`` naming ``key``."""
    if not is_margin(margin):
        raise ValueError(f"{key}={margin!r} must be a number in [0, 1): how far global ranking must lead per-layer "
                         "ranking on val to be kept (0.05 = 5 points of val accuracy; 0: the higher score wins)")
    return float(margin)
