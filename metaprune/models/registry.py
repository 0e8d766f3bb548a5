"""Model registry: ``build(name, **size)`` returns an ``nn.Module`` that remembers how it was built.

Every model carries ``model.metaprune_spec = {"name": ..., "args": {...}}`` so that a checkpoint can
rebuild it in a fresh process without pickle. Names are the families below, ``tv:<name>`` for any
torchvision classification constructor, ``timm:<name>`` for a timm model and ``hf:<class>`` for a Hugging Face
``transformers`` model class given its config dict (see ``foreign.py``); always random init unless the user loads
weights.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Callable

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_LAZY = {"onnx": "metaprune.onnx"}  # name -> module that registers it when imported


class UnknownModelError(ValueError):
    pass


def register(name: str):
    """Decorator adding a constructor to the registry under ``name``."""

    def deco(fn: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def available() -> list[str]:
    return sorted(_REGISTRY)


def _torchvision_constructor(name: str) -> Callable[..., nn.Module]:
    import torchvision.models as tvm

    fn = getattr(tvm, name, None)
    if fn is None or not callable(fn) or name.startswith("_") or inspect.isclass(fn):
        known = ", ".join(n for n in tvm.list_models(module=tvm))
        raise UnknownModelError(f"torchvision has no classification model {name!r}; known: {known}")
    return fn


def constructor(name: str) -> Callable[..., nn.Module]:
    """The function ``build(name, ...)`` calls (a torchvision constructor for ``tv:<name>``)."""
    if name.startswith("tv:"):
        return _torchvision_constructor(name[3:])
    if name.startswith(("timm:", "hf:")):
        from .foreign import constructor as foreign

        try:
            return foreign(name)
        except ValueError as e:
            raise UnknownModelError(str(e)) from None
    if name in _LAZY and name not in _REGISTRY:
        importlib.import_module(_LAZY[name])  # heavy optional families register on first use
    if name not in _REGISTRY:
        raise UnknownModelError(
            f"unknown model {name!r}; registered: {', '.join(available())}, or tv:<torchvision name>, "
            "timm:<timm name>, hf:<transformers class>"
        )
    return _REGISTRY[name]


def build(name: str, **args) -> nn.Module:
    """Build model ``name`` with constructor ``args`` and record the spec on it."""
    fn = constructor(name)
    if name.startswith("tv:"):
        tv_args = dict(args)
        tv_args.setdefault("weights", None)
        model = fn(**tv_args)
    elif name.startswith(("timm:", "hf:")):
        model = fn(**args)  # timm takes any keyword; transformers a config dict
    else:
        sig = inspect.signature(fn)
        unknown = [k for k in args if k not in sig.parameters]
        if unknown:
            raise UnknownModelError(
                f"model {name!r} takes no argument(s) {unknown}; it takes {list(sig.parameters)}"
            )
        model = fn(**args)
    model.metaprune_spec = {"name": name, "args": dict(args)}
    return model


def build_for_data(name: str, input_shape, num_classes: int, **args) -> nn.Module:
    """Build ``name`` fitted to a dataset: fills ``num_classes``, ``in_channels`` and the input size
    (``input_size`` / ``image_size``) when the constructor takes them and they are not given."""
    if name.startswith(("tv:", "timm:")):
        args.setdefault("num_classes", num_classes)
        return build(name, **args)
    if name not in _REGISTRY:
        return build(name, **args)  # raises the clear unknown-model error
    params = inspect.signature(_REGISTRY[name]).parameters
    fill = {"num_classes": num_classes, "in_channels": input_shape[0],
            "input_size": input_shape[-1], "image_size": input_shape[-1]}
    for k, v in fill.items():
        if k in params:
            args.setdefault(k, v)
    return build(name, **args)
