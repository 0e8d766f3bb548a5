"""Pruning is all or nothing, and never returns a model whose outputs changed shape.

``unchanged_on_error(model)``: if the block raises, every module of ``model`` gets back its attributes, submodules,
parameters (the same objects, with their old shapes, values and gradients) and buffers, so the caller's model is
exactly as handed over. ``output_shapes`` / ``check_output_shapes``: the shapes of every output a forward returns,
compared before and after pruning.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from ..depgraph import TraceTimeoutError
from ..utils import preserve_mode


class PruningFailed(ValueError):
    """Pruning raised after it started changing the model; the model was restored. A ValueError: the model handed
    in is what cannot be pruned, so the command line reports it as one ``error:`` line, not an internal error."""


@contextlib.contextmanager
def unchanged_on_error(model: nn.Module, what: str = "pruning"):
    """Restore ``model`` exactly (structure, attributes, parameter objects and values) if the block raises.

    The error is re-raised as :class:`PruningFailed`, one sentence that names the cause and says the model is
    unchanged; a ``ValueError`` or ``TypeError`` (metaprune's own refusals: a target out of reach, a layer with no
    pruning rule) and a :class:`~metaprune.depgraph.TraceTimeoutError` pass through as they are."""
    modules = list(model.modules())
    attrs = [(m, dict(m.__dict__), dict(m._parameters), dict(m._buffers), dict(m._modules)) for m in modules]
    tensors = {}
    for m in modules:
        for store in (m._parameters, m._buffers):
            for t in store.values():
                if t is not None and id(t) not in tensors:
                    # kept on the CPU: a model filling an accelerator's memory still fits once
                    tensors[id(t)] = (t, t.detach().to("cpu", copy=True),
                                      None if t.grad is None else t.grad.detach().to("cpu", copy=True),
                                      t.requires_grad, t.device)
    try:
        yield model
    except BaseException as e:
        _restore(attrs, tensors)
        if isinstance(e, (ValueError, TypeError, PruningFailed, TraceTimeoutError)) or not isinstance(e, Exception):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PruningFailed(f"{what} {type(model).__name__} failed ({type(e).__name__}: {msg}); "
                            "the model was left unchanged") from e


@torch.no_grad()
def _restore(attrs, tensors) -> None:
    """Put every module's attributes and tensors back."""
    for m, d, params, buffers, children in attrs:
        m.__dict__.clear()
        m.__dict__.update(d)
        for store, old in ((m._parameters, params), (m._buffers, buffers), (m._modules, children)):
            store.clear()
            store.update(old)
    for t, value, grad, requires_grad, device in tensors.values():
        t.data = value.to(device)
        t.grad = None if grad is None else grad.to(device)
        t.requires_grad_(requires_grad)


def _flatten(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):  # also Hugging Face's ModelOutput
        return [t for v in out.values() for t in _flatten(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _flatten(v)]
    return []


def output_shapes(model: nn.Module, example_inputs) -> list[tuple]:
    """Shapes of every tensor a forward on ``example_inputs`` returns (eval mode, no grad; mode restored)."""
    with torch.no_grad(), preserve_mode(model):
        out = model.eval()(example_inputs)
    return [tuple(t.shape) for t in _flatten(out)]


def check_output_shapes(model: nn.Module, example_inputs, before: list[tuple]) -> None:
    """Raise if the pruned ``model``'s output shapes differ from ``before`` (the unpruned model's)."""
    try:
        after = output_shapes(model, example_inputs)
    except Exception as e:
        raise RuntimeError(f"the pruned model's forward fails ({type(e).__name__}: {e})") from e
    if after != before:
        raise RuntimeError(f"pruning changed the model's output shapes from {before} to {after}: a layer writing an "
                           "output was pruned; list it in prune.ignored_layers")
