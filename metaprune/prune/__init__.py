"""Structural pruning: DepGraph channel groups, swappable importance criteria, a one-shot search for the
amount that meets a MACs or parameter target, and the load -> transform -> prune -> finetune pipeline.

``prune(model, example_inputs, target_speedup=2.0)`` prunes in place; ``groups`` exposes the groups
as parameter slices for differentiable group regularisers; ``run_prune`` is the whole ``prune.py`` run.
"""
from ..cost import find_output_layers
from ..depgraph import Group, Slice, TraceTimeoutError, UnprunableOpError, group_norms, groups
from .importance import Importance, importance
from .pruner import PruneResult, prune
from .safety import PruningFailed

__all__ = ["prune", "PruneResult", "groups", "group_norms", "find_output_layers", "Group", "Slice",
           "importance", "Importance", "UnprunableOpError", "PruningFailed", "TraceTimeoutError"]
