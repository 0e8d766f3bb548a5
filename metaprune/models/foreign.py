"""Builders for models from other libraries, so a pruned one saves and reloads as a metaprune checkpoint.

``build("timm:<model name>", **kwargs)`` is ``timm.create_model(name, pretrained=False, **kwargs)``;
``build("hf:<class name>", config={...})`` is the ``transformers`` model class (e.g.
``BertForSequenceClassification``) built from a plain config dict (``model.config.to_dict()``). A Hugging Face
model built by ``transformers`` itself needs nothing: :func:`hf_spec` reads its class and config from the model.

Both record a JSON spec like every registry model, so ``save_model`` writes safetensors + ``spec.json`` and
``load_model`` rebuilds the unpruned architecture (random init, never a download, never a file read), shrinks
it to the saved shapes and loads the weights. Arguments that would download or read weights are refused.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch.nn as nn

# timm.create_model arguments that fetch or read weights; the checkpoint's own safetensors hold them
_TIMM_REFUSED = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")
_HF_REFUSED = ("auto_map",)  # names remote code; never followed here, refused so no spec carries it


def constructor(name: str) -> Callable[..., nn.Module]:
    """The function that builds ``timm:<name>`` or ``hf:<class>`` from its spec arguments; ``ValueError`` for a
    name the library does not have."""
    lib, _, what = name.partition(":")
    if not what:
        raise ValueError(f"model {name!r}: give the {'timm model' if lib == 'timm' else 'transformers class'} "
                         f"name after '{lib}:'")
    return _timm(what) if lib == "timm" else _hf(what)


def _timm(name: str) -> Callable[..., nn.Module]:
    import timm

    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r} (timm.list_models() lists them)")

    def create(**kwargs) -> nn.Module:
        bad = [k for k in _TIMM_REFUSED if kwargs.get(k) not in (None, False)]
        if bad:
            raise ValueError(f"timm:{name}: argument(s) {bad} would fetch or read weights; a metaprune checkpoint "
                             "keeps its weights in its own safetensors file")
        return timm.create_model(name, pretrained=False, **kwargs)

    create.__name__ = f"timm_{name}"
    return create


def _hf(cls_name: str) -> Callable[..., nn.Module]:
    import transformers

    cls = getattr(transformers, cls_name, None) if not cls_name.startswith("_") else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(f"transformers has no model class {cls_name!r}")

    def create(config: dict) -> nn.Module:
        if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
            raise ValueError(f"hf:{cls_name}: 'config' must be a config dict with its 'model_type' "
                             "(model.config.to_dict())")
        bad = [k for k in _HF_REFUSED if k in config]
        if bad:
            raise ValueError(f"hf:{cls_name}: config key(s) {bad} refused (they name remote code)")
        try:
            cfg = transformers.AutoConfig.for_model(**config)
        except ValueError as e:
            raise ValueError(f"hf:{cls_name}: config model_type {config['model_type']!r} is unknown: {e}") from None
        return cls(cfg)

    create.__name__ = f"hf_{cls_name}"
    return create


def hf_spec(model: nn.Module) -> dict | None:
    """``{"name": "hf:<class>", "args": {"config": ...}}`` for a ``transformers`` model, else None (without
    importing ``transformers``: a model of its classes exists only once it is loaded)."""
    transformers = sys.modules.get("transformers")
    if transformers is None or not isinstance(model, transformers.PreTrainedModel):
        return None
    config = {k: v for k, v in model.config.to_dict().items() if k not in _HF_REFUSED}
    return {"name": f"hf:{type(model).__name__}", "args": {"config": config}}
