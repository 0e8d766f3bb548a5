"""Custom layer types: one registry for everything metaprune needs to know about a layer it does not ship.

A layer type with parameters that torch-pruning has no rule for is registered once::

    from metaprune.layers import register_layer
    register_layer(GatedLinear, pruner=GatedLinearPruner(), graph_rule=gated_linear_rule)

``pruner`` is a torch-pruning custom pruner (a ``BasePruningFunc`` subclass, plus our ``param_slices(layer, out)``
listing the entries one channel owns, and optionally ``macs_terms(layer, inputs, output)`` for its MACs, see
``metaprune.cost``); it is handed to every ``DependencyGraph`` metaprune builds (grouping, pruning, the
cost model). ``graph_rule`` tells the network <-> graph converter where each parameter entry of the
layer lives (see ``metaprune.graph.rules``). Either may be registered alone and the other added later; a second
registration of the same part replaces the first. The built-in rules (``nn.LSTM`` of any depth, torch-geometric's
``GATConv``, ``nn.RMSNorm``) are registered the same way by ``metaprune.models``/``metaprune.graph``. See
``docs/custom_layers.md``.

Layer types of a library metaprune does not import (Hugging Face's GPT-2 ``Conv1D``, every ``*RMSNorm`` of its
decoder models; timm's ``LayerScale``/``LayerScale2d`` and ``BlurPool2d``, whose pruners live in
``metaprune.depgraph``) are registered by name with ``register_layer_by_name``: each class of a matching library module
gets the pruner once that module is loaded, so ``import metaprune`` never imports ``transformers``.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch.nn as nn

_PRUNERS: dict[type, object] = {}
_GRAPH_RULES: dict[type, Callable] = {}
_BY_NAME: list[tuple[str, str, object]] = []  # (module name prefix, class name suffix, pruner)
_SCANNED = [0]  # len(sys.modules) at the last scan for classes matching _BY_NAME


def register_layer(layer_type: type, pruner=None, graph_rule: Callable | None = None) -> None:
    """Register the pruning rule and/or the NetGraph rule of ``layer_type`` (an ``nn.Module`` subclass)."""
    if not (isinstance(layer_type, type) and issubclass(layer_type, nn.Module)):
        raise TypeError(f"register_layer expects an nn.Module subclass, got {layer_type!r}")
    if pruner is None and graph_rule is None:
        raise ValueError(f"register_layer({layer_type.__name__}): give a pruner, a graph_rule or both")
    if pruner is not None:
        check_pruner(layer_type, pruner)
        _PRUNERS[layer_type] = pruner
    if graph_rule is not None:
        if not callable(graph_rule):
            raise TypeError(f"graph_rule for {layer_type.__name__} must be callable, got {graph_rule!r}")
        _GRAPH_RULES[layer_type] = graph_rule


def register_layer_by_name(module_prefix: str, class_suffix: str, pruner) -> None:
    """Register ``pruner`` for every ``nn.Module`` class defined in a loaded module whose name starts with
    ``module_prefix`` (``"transformers.models."``) and whose class name ends with ``class_suffix`` (``"RMSNorm"``).
    Classes are looked up when pruners are asked for; a type registered with ``register_layer`` keeps its pruner."""
    check_pruner(f"{module_prefix}*{class_suffix}", pruner)
    _BY_NAME.append((module_prefix, class_suffix, pruner))
    _SCANNED[0] = 0


def _register_loaded_by_name() -> None:
    """Register the classes matching ``register_layer_by_name`` rules among the modules loaded since the last scan."""
    if not _BY_NAME or len(sys.modules) == _SCANNED[0]:
        return
    _SCANNED[0] = len(sys.modules)
    for mod_name, mod in list(sys.modules.items()):
        for prefix, suffix, pruner in _BY_NAME:
            if mod is None or not mod_name.startswith(prefix):
                continue
            for cls_name, cls in list(vars(mod).items()):
                if cls_name.endswith(suffix) and isinstance(cls, type) and issubclass(cls, nn.Module) \
                        and cls.__module__ == mod_name:
                    _PRUNERS.setdefault(cls, pruner)


def check_pruner(layer_type: type, pruner) -> None:
    """Raise ``TypeError`` naming ``layer_type`` unless ``pruner`` has torch-pruning's four pruner methods."""
    for method in ("prune_out_channels", "prune_in_channels", "get_out_channels", "get_in_channels"):
        if not callable(getattr(pruner, method, None)):
            raise TypeError(f"pruner for {getattr(layer_type, '__name__', layer_type)} has no {method}(); subclass "
                            "metaprune.depgraph.BasePruningFunc (torch-pruning's pruner base)")


def custom_pruners() -> dict[type, object]:
    """``{layer type: pruner}`` of every registered type (torch-pruning's ``customized_pruners``)."""
    _register_loaded_by_name()
    return dict(_PRUNERS)


def pruner_for(module: nn.Module):
    """The registered pruner of ``module``'s exact type, or None."""
    _register_loaded_by_name()
    return _PRUNERS.get(type(module))


def graph_rule_for(module: nn.Module) -> Callable | None:
    """The registered NetGraph rule of ``module``'s exact type, or None."""
    return _GRAPH_RULES.get(type(module))
