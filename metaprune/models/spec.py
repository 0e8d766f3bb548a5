"""The spec that rebuilds a (possibly pruned) model without pickle.

A spec is plain JSON: the registry name and constructor arguments, the shape of every parameter and
buffer, and the few integer attributes structural pruning changes (``groups`` of depthwise convs,
``num_heads`` of attention). ``rebuild`` constructs the original architecture and shrinks every
layer to the recorded shapes, so a pruned model loads in a fresh process.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn

from ..depgraph import retie, tied_parameters
from .budget import MAX_PARAMS, check_budget
from .registry import build, constructor

# the only attributes a spec restores: the integer sizes structural pruning changes
_INT_ATTRS = ("num_heads", "groups", "head_dim", "hidden_dim", "embed_dim", "num_features", "dim",
              "attn_dim", "head_hidden_size",  # timm
              "num_attention_heads", "attention_head_size", "all_head_size",  # Hugging Face
              "num_key_value_heads", "split_size", "nf", "nx")  # Hugging Face GPT-2 attention and Conv1D
_DOWNLOADS = ("weights", "weights_backbone", "pretrained", "pretrained_backbone")  # torchvision arguments


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_spec(spec: dict) -> None:
    """Refuse, naming the key, a spec that is malformed, would download weights, restores an attribute
    pruning never changes, or describes a network over the size budget (checked on the meta device, so
    before anything real is allocated). ``rebuild`` calls it; errors are ``ValueError``."""
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError("spec 'name' must be a model name (a string)")
    name = spec["name"]
    for key, kind in (("args", dict), ("shapes", dict), ("attrs", dict), ("extra", dict)):
        if not isinstance(spec.get(key, {}), kind):
            raise ValueError(f"spec {key!r} must be a JSON object, got {type(spec[key]).__name__}")
    args = spec.get("args", {})
    for k in _DOWNLOADS:
        if args.get(k) not in (None, False):
            raise ValueError(f"args.{k}={args[k]!r}: loading a checkpoint never downloads pretrained weights "
                             f"(its weights are in its own file); remove {k!r} from the spec")
    total = 0
    for key, shape in spec.get("shapes", {}).items():
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ValueError(f"shapes.{key}={shape!r}: a shape must be a list of non-negative integers")
        total += math.prod(shape)
        if total > MAX_PARAMS:
            raise ValueError(f"shapes.{key}={shape!r}: the recorded shapes total over {MAX_PARAMS:,} "
                             "parameters (budget); refused before allocating anything")
    for module, attrs in spec.get("attrs", {}).items():
        if not isinstance(attrs, dict):
            raise ValueError(f"attrs.{module}: must map attribute names to integers, got {attrs!r}")
        for a, v in attrs.items():
            key = f"attrs.{module + '.' if module else ''}{a}"
            if a not in _INT_ATTRS:
                raise ValueError(f"{key}: refused: a spec may only restore the sizes pruning changes "
                                 f"({', '.join(_INT_ATTRS)})")
            if not _is_int(v):
                raise ValueError(f"{key}={v!r}: must be an integer")
    if name != "onnx":  # an ONNX graph is bounded by the size of the spec file that holds it
        fn = constructor(name)
        check_budget(functools.wraps(fn)(lambda **a: build(name, **a)), args, f"model {name!r}")


def model_spec(model: nn.Module) -> dict:
    from .foreign import hf_spec

    spec = getattr(model, "metaprune_spec", None) or hf_spec(model)
    if spec is None:
        raise ValueError(
            "model has no metaprune spec; build it with metaprune.models.build(name, ...) (a timm model: "
            "build('timm:<name>', ...)) or set model.metaprune_spec = {'name': ..., 'args': {...}}"
        )
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    attrs = {}
    for name, m in model.named_modules():
        found = {a: getattr(m, a) for a in _INT_ATTRS if isinstance(getattr(m, a, None), int)
                 and not isinstance(getattr(m, a), bool)}
        if found:
            attrs[name] = found
    return {"name": spec["name"], "args": spec["args"], "shapes": shapes, "attrs": attrs,
            "extra": spec.get("extra", {})}


def _resize_param(module: nn.Module, pname: str, shape) -> None:
    old = getattr(module, pname)
    if old is None or list(old.shape) == list(shape):
        return
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, pname, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module.register_buffer(pname, new)


def resize_to(model: nn.Module, shapes: dict, attrs: dict | None = None) -> nn.Module:
    """Shrink (or grow) every parameter/buffer of ``model`` to ``shapes`` and fix layer attributes."""
    attrs = attrs or {}
    tied = tied_parameters(model)  # a language model's tied embedding is resized once, and stays tied
    unknown = sorted(set(attrs) - {n for n, _ in model.named_modules()})
    if unknown:
        raise ValueError(f"attrs.{unknown[0]}: refused: the model has no module of that name")
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        for pname, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            key = prefix + pname
            if key in shapes:
                _resize_param(m, pname, shapes[key])
        for a, v in attrs.get(mname, {}).items():
            if a not in _INT_ATTRS or not _is_int(getattr(m, a, None)):
                raise ValueError(f"attrs.{prefix}{a}: refused: {type(m).__name__} {mname or '(root)'!r} has no "
                                 "integer size of that name to restore")
            setattr(m, a, v)
        w = getattr(m, "weight", None)
        if isinstance(m, nn.modules.conv._ConvNd) and w is not None:
            m.out_channels = w.shape[0]
            m.in_channels = w.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            m.num_features = (m.running_mean if m.running_mean is not None else m.weight).shape[0]
        elif isinstance(m, nn.LayerNorm) and w is not None:
            m.normalized_shape = tuple(w.shape)
        elif isinstance(m, nn.GroupNorm) and w is not None:
            m.num_channels = w.shape[0]
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = m.weight.shape
        elif isinstance(m, nn.RNNBase):
            m.input_size, m.hidden_size = m.weight_ih_l0.shape[1], m.weight_hh_l0.shape[1]
        elif isinstance(m, nn.MultiheadAttention):
            m.embed_dim = m.out_proj.weight.shape[0]
            m.head_dim = m.embed_dim // m.num_heads
            m.kdim = m.vdim = m.embed_dim
    retie(model, tied)
    return model


def rebuild(spec: dict, checked: bool = False) -> nn.Module:
    """The model ``spec`` describes (random weights), after ``check_spec`` unless the caller ran it."""
    if not checked:
        check_spec(spec)
    model = build(spec["name"], **spec["args"])
    resize_to(model, spec.get("shapes", {}), spec.get("attrs", {}))
    if spec.get("extra"):
        model.metaprune_spec["extra"] = spec["extra"]
    return model
