"""The spec that rebuilds a (possibly pruned) model without pickle.

A spec is plain JSON: the registry name and constructor arguments, the shape of every parameter and
buffer, and the few integer attributes structural pruning changes (``groups`` of depthwise convs,
``num_heads`` of attention). ``rebuild`` constructs the original architecture and shrinks every
layer to the recorded shapes, so a pruned model loads in a fresh process.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .registry import build

_INT_ATTRS = ("num_heads", "groups", "head_dim", "hidden_dim", "embed_dim", "num_features", "dim")


def model_spec(model: nn.Module) -> dict:
    spec = getattr(model, "metaprune_spec", None)
    if spec is None:
        raise ValueError(
            "model has no metaprune spec; build it with metaprune.models.build(name, ...) "
            "or set model.metaprune_spec = {'name': ..., 'args': {...}}"
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
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        for pname, _ in list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False)):
            key = prefix + pname
            if key in shapes:
                _resize_param(m, pname, shapes[key])
        for a, v in attrs.get(mname, {}).items():
            if hasattr(m, a):
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
    return model


def rebuild(spec: dict) -> nn.Module:
    model = build(spec["name"], **spec["args"])
    resize_to(model, spec.get("shapes", {}), spec.get("attrs", {}))
    if spec.get("extra"):
        model.metaprune_spec["extra"] = spec["extra"]
    return model
