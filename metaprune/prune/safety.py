"""Pruning is all or nothing, and never returns a model whose outputs changed shape.

``unchanged_on_error(model)``: if the block raises, every module of ``model`` gets back its attributes, submodules,
parameters (the same objects, with their old shapes, values and gradients) and buffers, so the caller's model is
exactly as handed over. ``output_shapes`` / ``check_output_shapes``: the shapes of every output a forward returns,
compared before and after pruning. A failure names the innermost layer of ``model`` it was raised in (from the
traceback), so the message points at the block whose pattern the pruner got wrong.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn as nn

from ..depgraph import TraceTimeoutError, output_tensors
from ..utils import preserve_mode


class PruningFailed(ValueError):
    """Pruning raised after it started changing the model; the model was restored. A ValueError: the model handed
    in is what cannot be pruned, so the command line reports it as one ``error:`` line, not an internal error."""


@contextlib.contextmanager
def unchanged_on_error(model: nn.Module, what: str = "pruning"):
    """Restore ``model`` exactly (structure, attributes, parameter objects and values) if the block raises.

    The error is re-raised as :class:`PruningFailed`, one sentence that names the cause, where it arose (see
    :func:`failing_layer`) and says the model is unchanged; a ``ValueError`` or ``TypeError`` raised by metaprune's
    own code (its refusals: a target out of reach, a layer with no pruning rule) and a
    :class:`~metaprune.depgraph.TraceTimeoutError` pass through as they are."""
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
        if (isinstance(e, (PruningFailed, TraceTimeoutError)) or not isinstance(e, Exception)
                or (isinstance(e, (ValueError, TypeError)) and _raised_here(e))):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        where = failing_layer(model, e)
        where = f" {where}" if where and where not in msg else ""
        raise PruningFailed(f"{what} {type(model).__name__} failed{where} ({type(e).__name__}: {msg}); "
                            "the model was left unchanged") from e


_PACKAGE = str(Path(__file__).resolve().parents[1])


def _raised_here(error: BaseException) -> bool:
    """Was ``error`` raised by metaprune's own code (its innermost frame in the package), not inside a library or
    the model?"""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(_PACKAGE)


# torch-pruning's functions that map channels through a parameter-free op, and the op's pattern: an error raised in
# one of them means it could not follow the channels through that op
_CHANNEL_OPS = {"update_reshape_index_mapping": "a reshape that regroups channels (channel shuffle, or a view into "
                                                "groups)",
                "update_slice_index_mapping": "a slice of the channels (channel split by indexing)",
                "update_split_index_mapping": "a split of the channels (channel split)",
                "update_concat_index_mapping": "a concatenation of channels",
                "update_unbind_index_mapping": "an unbind of the channels",
                "update_expand_index_mapping": "an expand of the channels",
                "update_flatten_index_mapping": "a flatten into a Linear"}


def failing_layer(model: nn.Module, error: BaseException) -> str | None:
    """Where ``error`` arose, in words naming a layer of ``model``: ``in layer name (Type)`` for the innermost
    submodule on its traceback (a frame of its own code, or of a pruning function handed it as ``layer``/``module``),
    ``at <pattern> after layer name (Type)`` when torch-pruning could not map channels through a parameter-free op;
    follows the exceptions it was raised from; None when neither is on the traceback."""
    site = _failure_site(model, error)
    return None if site is None else site[1]


def failing_module(model: nn.Module, error: BaseException) -> str | None:
    """The name of the layer of ``model`` that :func:`failing_layer` reports ``error`` in; None when the error arose
    elsewhere (in torch-pruning's mapping of channels through a parameter-free op, or outside any layer)."""
    site = _failure_site(model, error)
    return None if site is None else site[0]


def _failure_site(model: nn.Module, error: BaseException) -> tuple[str | None, str] | None:
    """``(layer name or None, words)`` of the innermost place on the traceback of ``error`` (or of the exceptions it
    was raised from) that names a layer of ``model`` (see :func:`failing_layer`)."""
    names = {id(m): n for n, m in model.named_modules() if n}
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        found, tb = None, error.__traceback__
        while tb is not None:
            local, code = tb.tb_frame.f_locals, tb.tb_frame.f_code.co_name
            owner = next((local[k] for k in ("self", "layer", "module") if id(local.get(k)) in names), None)
            if owner is not None:
                found = names[id(owner)], f"in layer {names[id(owner)]} ({type(owner).__name__})"
            node = next((v for k, v in local.items() if k.endswith("node") and hasattr(v, "inputs")), None)
            if code in _CHANNEL_OPS and node is not None:
                before = _named_input(node, names)
                found = None, f"at {_CHANNEL_OPS[code]}" + (f" after layer {before}" if before else "")
            tb = tb.tb_next
        if found is not None:
            return found
        error = error.__cause__ or error.__context__
    return None


def _named_input(node, names: dict, limit: int = 50) -> str | None:
    """``name (Type)`` of the nearest layer of the model feeding torch-pruning's graph ``node``."""
    queue, seen = list(node.inputs), set()
    while queue and len(seen) < limit:
        n = queue.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        m = getattr(n, "module", None)
        if id(m) in names:
            return f"{names[id(m)]} ({type(m).__name__})"
        queue += list(getattr(n, "inputs", []))
    return None


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


def output_shapes(model: nn.Module, example_inputs) -> list[tuple]:
    """Shapes of every output tensor a forward on ``example_inputs`` returns (the tensors the tracer starts from:
    :func:`~metaprune.depgraph.output_tensors`; eval mode, no grad; mode restored)."""
    with torch.no_grad(), preserve_mode(model):
        out = model.eval()(example_inputs)
    return [tuple(t.shape) for t in output_tensors(out)]


def check_output_shapes(model: nn.Module, example_inputs, before: list[tuple]) -> None:
    """Raise if the pruned ``model``'s output shapes differ from ``before`` (the unpruned model's)."""
    try:
        after = output_shapes(model, example_inputs)
    except Exception as e:
        where = failing_layer(model, e)
        where = f" {where}" if where else ""
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RuntimeError(f"the pruned model's forward fails{where} ({type(e).__name__}: {msg})") from e
    if after != before:
        raise RuntimeError(f"pruning changed the model's output shapes from {before} to {after}: a layer writing an "
                           "output was pruned; list it in prune.ignored_layers")
