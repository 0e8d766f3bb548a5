"""Small helpers every layer of metaprune may use (this module imports nothing from metaprune): the version,
``preserve_mode`` and ``UsageError``, the error type a user's bad input raises."""
from __future__ import annotations

import contextlib

import torch.nn as nn

__version__ = "0.1.0"


@contextlib.contextmanager
def preserve_mode(model: nn.Module):
    """Remember the train/eval mode of ``model`` and every submodule; restore it on exit, exceptions included.

    Tracers and counters (torch-pruning's, ONNX export) and evaluation switch a model to eval mode; a caller's
    model comes back in the mode it was handed over in."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


class UsageError(ValueError):
    """Bad user input caught at the boundary; reported as one sentence and exit code 2."""
