"""Pruning at initialisation (``stage=init``): shrink a randomly initialised network before training it.

Criteria, scored per DepGraph group by torch-pruning's group importances:

- ``"snip"``: one batch, one backward pass; a channel's saliency is SNIP's connection sensitivity
  ``|w * dL/dw|`` summed over every weight of its coupled group (torch-pruning's ``GroupTaylorImportance``,
  the first-order Taylor score, which is exactly that sum). Gradients are recomputed after every small
  pruning step, so the score always refers to the network as it currently is.
- ``"magnitude"``: data-free, group L2 norm of the initial weights.

BatchNorm running statistics are restored after the SNIP forward pass, so the returned network is the
initialisation minus the pruned channels; train it with the standard loop (``metaprune.train.fit``).
"""
from __future__ import annotations

import torch.nn as nn

from .importance import tp_magnitude, tp_taylor
from .obs import prune_to_speedup
from .pruner import batch_gradients

CRITERIA = ("snip", "magnitude")


def prune_at_init(model: nn.Module, example_inputs, target_speedup: float, criterion: str = "snip",
                  batch=None, ignored_layers=None, global_pruning: bool = False, steps: int = 30) -> dict:
    """Prune the (untrained) ``model`` in place to ``target_speedup`` x fewer MACs before training.

    ``batch``: ``(inputs, labels)`` for ``criterion="snip"`` (one batch is enough); not used by
    ``"magnitude"``. Returns the pruning report of :func:`metaprune.prune.obs.prune_to_speedup`.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if criterion == "snip":
        if batch is None or len(batch) != 2:
            raise ValueError("criterion='snip' needs batch=(inputs, labels): one batch of training data")
        importance = tp_taylor()
        before_step = lambda m: batch_gradients(m, batch, train=True)  # noqa: E731  (BN buffers untouched)
    else:
        importance = tp_magnitude(p=2)
        before_step = None
    report = prune_to_speedup(model, example_inputs, target_speedup, importance, ignored_layers=ignored_layers,
                              global_pruning=global_pruning, steps=steps, before_step=before_step)
    model.zero_grad(set_to_none=True)
    return {**report, "criterion": criterion}
