"""Deployment export of a (pruned) model: ``torch.export`` programs and ONNX, each verified after reloading.

``export_program`` writes ``torch.export.export(model)`` as a ``.pt2`` archive (dynamic batch axis, written
atomically); ``verify_program`` loads it back and compares its outputs with the eager model.
``export_verified`` does both for any of :data:`FORMATS` (ONNX through :mod:`metaprune.onnx`), as the
pipeline's ``export`` option does.
"""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import torch
import torch.nn as nn

from .io import atomic_write_file
from .utils import preserve_mode

FORMATS = {"onnx": "model.onnx", "torch": "model.pt2"}  # format -> file name in the pruned model's directory
TOLERANCE = 1e-4


class ExportError(ValueError):
    """A model that torch.export cannot capture, or an exported file whose outputs differ from the model."""


def _name(model: nn.Module) -> str:
    return getattr(model, "metaprune_spec", {}).get("name") or type(model).__name__


def _inputs(example_inputs) -> tuple:
    return tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)


def _pop(stack: list) -> None:
    stack.pop()  # returns None: a forward hook's non-None return would replace the module's output


@contextlib.contextmanager
def _module_trail(model: nn.Module):
    """Record the submodules whose forward is running, so a capture failure can name where it happened."""
    stack, handles = [], []
    for name, mod in model.named_modules():
        handles.append(mod.register_forward_pre_hook(lambda m, a, n=name: stack.append(n)))
        handles.append(mod.register_forward_hook(lambda m, a, o: _pop(stack)))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _culprit(error: Exception, message: str) -> str:
    """The op and the source line an export error names, where it names them: ' (op x, file:line in f)'."""
    op = getattr(error, "func", None)  # UnsupportedOperatorException carries the op itself
    found = re.search(r"torch\.ops\.(\w+\.\w+)|\b(\w+::\w+)", message)
    op = op if op is not None else found and (found.group(1) or found.group(2))
    calls = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', message)
    parts = [f"op {op}"] if op else []
    parts += [f"{Path(calls[-1][0]).name}:{calls[-1][1]} in {calls[-1][2]}"] if calls else []
    return f" ({', '.join(parts)})" if parts else ""


def export_program(model: nn.Module, example_inputs, path: str | os.PathLike) -> Path:
    """Capture ``model`` (eval mode) with ``torch.export.export`` and save it to ``path`` (``.pt2``) atomically.

    The batch axis of every input is dynamic, so the program runs at any batch size (1 included). A model that
    cannot be captured raises :class:`ExportError` naming the model, the module that was running and the op,
    where torch.export says which.
    """
    path = Path(path)
    # torch.export fixes a size-1 axis as a constant, so trace with at least 2 examples
    inputs = tuple(t if len(t) > 1 else t.expand(2, *t.shape[1:]).clone() for t in _inputs(example_inputs))
    batch = torch.export.Dim("batch")
    with preserve_mode(model), _module_trail(model.eval()) as stack:
        try:
            program = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
        except Exception as e:  # torch.export raises many types; all mean "cannot capture this model"
            msg = str(e).strip()
            where = f" in module '{stack[-1]}'" if stack and stack[-1] else ""
            first = ("the op has no fake (meta) kernel to trace with" if hasattr(e, "func")
                     else msg.splitlines()[0] if msg else type(e).__name__)
            raise ExportError(
                f"torch.export cannot capture {_name(model)}{where}{_culprit(e, msg)}: {first}") from e
    return atomic_write_file(path, lambda tmp: torch.export.save(program, tmp), suffix=".tmp.pt2")


def verify_program(model: nn.Module, path: str | os.PathLike, example_inputs, tolerance: float = TOLERANCE) -> float:
    """Largest absolute difference between the reloaded program at ``path`` and ``model`` (eval) on the inputs;
    :class:`ExportError` if it exceeds ``tolerance``.

    Only for a file this process has just written with :func:`export_program`: ``torch.export.load`` may
    unpickle (tensor subclasses, custom objects, and a ``weights_only=False`` fallback), so it must never be
    pointed at a file from elsewhere — metaprune never loads a user's ``.pt2``.
    """
    inputs = _inputs(example_inputs)
    program = torch.export.load(str(path))
    with preserve_mode(model), torch.no_grad():
        want, got = model.eval()(*inputs), program.module()(*inputs)
    want, got = (o[0] if isinstance(o, (tuple, list)) else o for o in (want, got))
    diff = float((got - want).abs().max())
    if not diff <= tolerance:  # NaN fails too
        raise ExportError(f"the torch.export program {path} of {_name(model)} differs from the model by {diff:.2e} "
                          f"(tolerance {tolerance:.0e})")
    return diff


def parse_formats(export) -> list[str]:
    """The config's ``export`` value (none | onnx | torch | both, or a list of formats) as a list of formats.
    A bad value is one ValueError naming the key."""
    if export in (None, False, "none", "null"):
        chosen = []
    elif export == "both":
        chosen = list(FORMATS)
    elif isinstance(export, str):
        chosen = [export]
    elif isinstance(export, (list, tuple)) and all(isinstance(f, str) for f in export):
        chosen = list(export)
    else:
        chosen = [None]
    bad = [f for f in chosen if f not in FORMATS]
    if bad:
        raise ValueError(f"export={export!r} is invalid: give none, onnx, torch, both, or a list of "
                         f"{', '.join(FORMATS)}")
    return [f for f in FORMATS if f in chosen]


def export_verified(model: nn.Module, example_inputs, directory: str | os.PathLike, formats,
                    tolerance: float = TOLERANCE) -> dict[str, dict]:
    """Write ``model`` in each of ``formats`` into ``directory``, reload each file and compare outputs.

    Returns ``{format: {"file", "max_abs_diff", "tolerance"}}``; raises :class:`ExportError` if an export
    fails or a reloaded file differs by more than ``tolerance``.
    """
    directory = Path(directory)
    out = {}
    for fmt in formats:
        path = directory / FORMATS[fmt]
        if fmt == "onnx":
            from .onnx import export_onnx, verify_onnx

            diff = verify_onnx(model, export_onnx(model, example_inputs, path), example_inputs)
            if not diff <= tolerance:
                raise ExportError(f"the ONNX file {path} of {_name(model)} differs from the model by {diff:.2e} "
                                  f"in onnxruntime (tolerance {tolerance:.0e})")
        else:
            diff = verify_program(model, export_program(model, example_inputs, path), example_inputs, tolerance)
        out[fmt] = {"file": path.name, "max_abs_diff": diff, "tolerance": tolerance}
    return out
