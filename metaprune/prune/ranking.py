"""Global or per-layer ranking, chosen per network on val (``prune.global_pruning=val``).

Which ranking prunes a network better depends on the network: on the Fashion-MNIST zoo, per-layer ranking is
6-10 points ahead of global ranking on the CNNs after the finetune and 15-25 points behind on the ViTs (README,
"Where the metanetwork stands"). So the choice is made where the answer is, per network and target: the network is
pruned both ways (on copies), each copy has its batch-norm statistics re-estimated on a few train batches (on a
further copy: right after pruning the stored statistics no longer fit the thinned layers and every candidate sits
near chance), the two are scored on **val**, and the better ranking wins (a tie keeps global ranking, the published
recipe). What is returned is the winning copy as pruned, with its stored statistics: the finetune that follows is
the one a fixed ranking gets. The choice costs forward passes only, no training step; with ``probe_steps`` (the
scorer's) each candidate's copy also trains that many SGD steps and is scored by its val loss, meant for 4x and
beyond, where every candidate's val accuracy right after pruning sits near chance; it is off by default because a
very thin candidate can diverge in those few steps and still finish best (README, "Networks no zoo holds").
"""
from __future__ import annotations

import copy
from typing import Callable

import torch.nn as nn

CHOICES = {"global": True, "per_layer": False}


def prune_ranked_on_val(model: nn.Module, prune_fn: Callable[[nn.Module, bool], object],
                        score: Callable[[nn.Module], float]) -> tuple[nn.Module, object, dict]:
    """Prune ``model`` with global and with per-layer ranking and keep the one that ``score`` rates higher.

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
    sign = 1 if getattr(score, "higher_is_better", True) else -1
    chosen = max(candidates, key=lambda n: (sign * scores[n], n == "global"))  # a tie keeps global ranking
    net, result = candidates[chosen]
    return net, result, {"chosen": chosen, getattr(score, "key", "val_acc"): scores,
                         "unreachable": {n: str(e) for n, e in errors.items()}}
