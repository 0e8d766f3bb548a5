"""Pruning rules for the layers of decoder language models that torch-pruning has no rule for.

``Conv1DPruner``: Hugging Face's ``Conv1D`` (GPT-2): a linear layer whose weight is stored ``[in, out]``
(``nx`` inputs, ``nf`` outputs), so output channel ``j`` owns column ``j`` of ``weight`` and ``bias[j]``; it costs
``in x out`` multiply-accumulates (plus the bias) per token. ``RMSNormPruner``: RMS norms (``nn.RMSNorm``, Llama's
``LlamaRMSNorm`` and the ``*RMSNorm`` of other Hugging Face models): a per-channel ``weight``, no bias, no running
statistics; channel ``c`` owns ``weight[c]``, and the norm's input and output channels are the same channels.

Registered with ``metaprune.layers``: ``nn.RMSNorm`` by type, the Hugging Face classes by name (``transformers`` is
never imported here; its classes get the rules once a model of theirs is loaded).
"""
from __future__ import annotations

import math

import torch.nn as nn

from ..depgraph import BasePruningFunc, kept_indices
from ..layers import register_layer, register_layer_by_name

_IDENT = [lambda t: t]


def _rows(x) -> int:
    """Tokens (every position of every sample) a per-position layer sees in input ``x``."""
    return int(math.prod(x.shape[:-1])) if x.dim() > 1 else 1


class Conv1DPruner(BasePruningFunc):
    """Removes output columns / input rows of a Hugging Face ``Conv1D`` (``y = x @ weight + bias``)."""

    def param_slices(self, layer, out: bool):
        if not out:
            return [("weight", 0, _IDENT)]
        return [("weight", 1, _IDENT)] + ([("bias", 0, _IDENT)] if layer.bias is not None else [])

    def prune_out_channels(self, layer, idxs) -> nn.Module:
        keep = kept_indices(layer.nf, idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 1)
        if layer.bias is not None:
            layer.bias = self._prune_parameter_and_grad(layer.bias, keep, 0)
        layer.nf = len(keep)
        return layer

    def prune_in_channels(self, layer, idxs) -> nn.Module:
        keep = kept_indices(layer.nx, idxs)
        layer.weight = self._prune_parameter_and_grad(layer.weight, keep, 0)
        layer.nx = len(keep)
        return layer

    def get_out_channels(self, layer) -> int:
        return layer.nf

    def get_in_channels(self, layer) -> int:
        return layer.nx

    def macs_terms(self, layer, inputs, output):
        """``in x out`` per token, plus the bias per token (as ``(coef, [(param, dim)])``, see ``metaprune.cost``)."""
        rows = float(_rows(inputs[0]))
        terms = [(rows, [("weight", 0), ("weight", 1)])]
        if layer.bias is not None:
            terms.append((rows, [("bias", 0)]))
        return terms


class RMSNormPruner(BasePruningFunc):
    """Removes channels of an RMS norm over the last dim: entries of its one-dimensional ``weight``."""

    @staticmethod
    def _weight(layer):
        w = getattr(layer, "weight", None)
        if w is not None and w.dim() != 1:
            raise NotImplementedError(f"RMSNormPruner prunes a norm over the last dim only; this one has a "
                                      f"{tuple(w.shape)} weight")
        return w

    def param_slices(self, layer, out: bool):
        return [("weight", 0, _IDENT)] if isinstance(self._weight(layer), nn.Parameter) else []

    def prune_out_channels(self, layer, idxs) -> nn.Module:
        w = self._weight(layer)
        if w is None:
            return layer
        keep = kept_indices(w.shape[0], idxs)
        layer.weight = self._prune_parameter_and_grad(w, keep, 0)
        if isinstance(getattr(layer, "normalized_shape", None), tuple):  # nn.RMSNorm normalises over this shape
            layer.normalized_shape = (len(keep),)
        return layer

    prune_in_channels = prune_out_channels  # input and output channels are the same channels

    def get_out_channels(self, layer):
        w = self._weight(layer)
        return None if w is None else w.shape[0]

    get_in_channels = get_out_channels

    def macs_terms(self, layer, inputs, output):
        """Two per element, as torch-pruning counts an affine LayerNorm (normalise, then scale)."""
        return [(2.0 * _rows(inputs[0]), [("weight", 0)])] if self.param_slices(layer, True) else []


register_layer(nn.RMSNorm, pruner=RMSNormPruner())
register_layer_by_name("transformers.pytorch_utils", "Conv1D", Conv1DPruner())
register_layer_by_name("transformers.models.", "RMSNorm", RMSNormPruner())
