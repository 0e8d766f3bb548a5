"""LSTM sequence classifier and the pruning rule that makes multi-layer LSTMs prunable.

``lstm``: ``nn.LSTM`` (batch first, 1 or more layers) over ``[batch, steps, features]``, the last step's
hidden state, then a small MLP head. Trained in the tests on ``digits_seq`` (digit image rows as time steps).

torch-pruning's own LSTM rule accepts only ``num_layers == 1``. ``LSTMPruner`` below handles any depth: the
hidden units of every layer share one width (``nn.LSTM`` has a single ``hidden_size``), so removing hidden
unit ``j`` removes, in every layer ``l``, the rows ``j, H+j, 2H+j, 3H+j`` (the i, f, g, o gates) of
``weight_ih_l{l}``, ``weight_hh_l{l}``, ``bias_ih_l{l}``, ``bias_hh_l{l}``, column ``j`` of ``weight_hh_l{l}``
and, for ``l > 0``, column ``j`` of ``weight_ih_l{l}``. It is registered for ``nn.LSTM`` with
``metaprune.layers.register_layer`` when this module is imported, so every dependency graph metaprune builds
(``metaprune.prune.prune`` included) uses it. Bidirectional LSTMs and ``proj_size`` are refused with a clear error.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..depgraph import BasePruningFunc, kept_indices
from ..layers import register_layer
from .registry import register


class LSTMPruner(BasePruningFunc):
    """Removes hidden units (out channels) or input features (in channels) of an ``nn.LSTM`` of any depth.

    ``param_slices(layer, out)`` lists ``(parameter name, dim, [index maps])``: the entries one channel owns,
    for importance criteria and for converters that need to know what a channel is made of.
    """

    TARGET_MODULES = nn.LSTM

    @staticmethod
    def _check(layer: nn.LSTM) -> None:
        if layer.bidirectional or getattr(layer, "proj_size", 0):
            raise NotImplementedError(
                "LSTMPruner prunes unidirectional LSTMs without proj_size; this layer has "
                f"bidirectional={layer.bidirectional}, proj_size={getattr(layer, 'proj_size', 0)}")

    def param_slices(self, layer: nn.LSTM, out: bool):
        self._check(layer)
        H = layer.hidden_size
        gates = [lambda t, k=k: t + k * H for k in range(4)]
        ident = [lambda t: t]
        if not out:
            return [("weight_ih_l0", 1, ident)]
        res = []
        for l in range(layer.num_layers):
            res += [(f"weight_ih_l{l}", 0, gates), (f"weight_hh_l{l}", 0, gates), (f"weight_hh_l{l}", 1, ident)]
            if layer.bias:
                res += [(f"bias_ih_l{l}", 0, gates), (f"bias_hh_l{l}", 0, gates)]
            if l > 0:
                res.append((f"weight_ih_l{l}", 1, ident))
        return res

    def prune_out_channels(self, layer: nn.LSTM, idxs) -> nn.Module:
        self._check(layer)
        H = layer.hidden_size
        keep = kept_indices(H, idxs)
        for name, dim, maps in self.param_slices(layer, out=True):
            rows = torch.cat([m(keep) for m in maps])
            setattr(layer, name, self._prune_parameter_and_grad(getattr(layer, name), rows, dim))
        layer.hidden_size = len(keep)
        layer.flatten_parameters()
        return layer

    def prune_in_channels(self, layer: nn.LSTM, idxs) -> nn.Module:
        self._check(layer)
        keep = kept_indices(layer.input_size, idxs)
        layer.weight_ih_l0 = self._prune_parameter_and_grad(layer.weight_ih_l0, keep, 1)
        layer.input_size = len(keep)
        layer.flatten_parameters()
        return layer

    def get_out_channels(self, layer: nn.LSTM) -> int:
        return layer.hidden_size

    def get_in_channels(self, layer: nn.LSTM) -> int:
        return layer.input_size


register_layer(nn.LSTM, pruner=LSTMPruner())


def sync_lstm_sizes(module: nn.Module) -> None:
    """Set ``input_size``/``hidden_size`` of every LSTM from its weight shapes (after a resize to a pruned spec)."""
    for m in module.modules():
        if isinstance(m, nn.LSTM):
            m.input_size = m.weight_ih_l0.shape[1]
            m.hidden_size = m.weight_hh_l0.shape[1]


class LSTMClassifier(nn.Module):
    """``[batch, steps, features]`` -> LSTM -> last hidden state -> Linear -> ReLU -> Linear (logits)."""

    def __init__(self, input_size: int = 8, hidden_size: int = 64, num_layers: int = 1, head: int = 64,
                 num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"lstm num_layers must be >= 1, got {num_layers}")
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.fc1 = nn.Linear(hidden_size, head)
        self.fc = nn.Linear(head, num_classes)
        # a pruned checkpoint is rebuilt at full width and resized; the LSTM's size attributes follow its weights
        self._register_load_state_dict_pre_hook(self._sizes_from_state)

    def _sizes_from_state(self, state_dict, prefix, *args):
        sync_lstm_sizes(self)

    def forward(self, x):
        if x.dim() != 3:
            raise ValueError(f"lstm expects [batch, steps, features], got shape {tuple(x.shape)}")
        out, _ = self.lstm(x)
        return self.fc(torch.relu(self.fc1(out[:, -1])))


@register("lstm")
def lstm(input_size: int = 8, hidden_size: int = 64, num_layers: int = 1, head: int = 64, num_classes: int = 10,
         dropout: float = 0.0) -> nn.Module:
    """LSTM classifier; ``build_for_data`` fills ``input_size`` from the dataset's last dim (features per step)."""
    return LSTMClassifier(input_size, hidden_size, num_layers, head, num_classes, dropout)
