"""DepGraph sparse learning: torch-pruning's ``GroupNormPruner`` group regulariser as a training hook.

``hook = sparse_learning_hook(model, example_inputs, reg=5e-4, alpha=4)`` returns a callable for
``fit(..., after_backward=hook)``: after each backward pass it adds the gradient of
reg * sum_g gamma_g * ||w_g||_2 with DepGraph's adaptive gamma_g = alpha ** ((max - imp) / (max - min)),
pushing whole coupled groups towards zero before they are pruned. This is the reference baseline the
metanetwork is compared with, so it is torch-pruning's own implementation, not ours.
"""
from __future__ import annotations

import torch.nn as nn

from ..cost import find_output_layers
from ..depgraph import GroupNormPruner, tp_pruner_kwargs
from ..utils import preserve_mode
from .importance import tp_magnitude


def sparse_learning_hook(model: nn.Module, example_inputs, reg: float = 5e-4, alpha: float = 4,
                         ignored_layers=()):
    names = set(find_output_layers(model, example_inputs)) | set(ignored_layers)
    ignored = [m for n, m in model.named_modules() if n in names]
    # torch-pruning 1.6's group-norm importance mis-indexes fused qkv projections; their groups are left
    # unregularised (every other group of a ViT still is)
    ignored += [m.qkv for m in model.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)]
    with preserve_mode(model):  # the tracer leaves the model in eval mode
        pruner = GroupNormPruner(model, example_inputs, importance=tp_magnitude(p=2), reg=reg, alpha=alpha,
                                 ignored_layers=ignored, pruning_ratio=0.5, **tp_pruner_kwargs())

    def hook(m: nn.Module) -> None:
        pruner.regularize(m)

    hook.pruner = pruner
    return hook
