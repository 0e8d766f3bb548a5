"""Data-free, finetune-free Optimal-Brain-Surgeon group pruning with weight compensation.

Every layer ``z = W x + b`` that reads a pruned channel group (a *consumer*: the in-channel side of a
DepGraph group) is treated with OBS on its augmented input ``[x; 1]``, with input statistics that need no
data (:func:`moments`). The network input is taken to be ``N(0, 1)`` (normalised data) and every BatchNorm to
output ``beta + gamma * (standardised input)`` per channel -- what BN is trained to produce:

- ``mode="independent"``: BN outputs independent ``N(beta, gamma^2)`` noise, so the channels entering a
  layer behind BN -> ReLU are independent rectified Gaussians (closed form: :func:`relu_moments`) and the
  covariance is diagonal;
- ``mode="propagated"`` (default of :func:`obs_prune`): the noise is pushed through the weights and each
  BN re-standardises it to ``(beta, gamma)``, so the covariance also holds the channel correlations the
  preceding weights induce (residual sums and pooling are handled by the same forward pass).
Without any BatchNorm the statistics fall back to identity (zero mean, identity covariance).

With input mean ``mu`` and covariance ``C`` (damped), removing channel set ``S`` of a consumer and keeping
``R``: the best linear prediction ``x_S ~ mu_S + B^T (x_R - mu_R)``, ``B = C_RR^-1 C_RS``, is folded into the
remaining weights, ``W_R += W_S B^T`` (per kernel position), and the constant part into the bias,
``b += W_S (mu_S - B^T mu_R)`` -- into the following BatchNorm's running mean when the layer has no bias.
With independent channels ``B = 0`` and this is the mean shift ``b += W_S mu_S``. Channel saliency is the OBS
``||W[:, q]||^2 / [C^-1]_qq`` (the part of channel q the others cannot explain), each output weighted by the
next BatchNorm's ``gamma^2 / running_var`` so costs are comparable across layers; a group sums it over all
its consumers. After a step, the next BatchNorm's running variance shrinks by the predicted variance lost
(``restore_variance``), keeping its outputs at the ``(beta, gamma)`` the layers after it were trained on.

``obs_prune(model, example_inputs, target_speedup)`` prunes in small torch-pruning steps until the MACs
target is met, recomputing statistics and compensating every step. ``OBSImportance`` is the torch-pruning
importance object; ``prune_to_speedup`` runs the same loop with any importance (group L2, random), which is
how the data-free benchmark compares criteria.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..cost import macs_and_params
from ..depgraph import (MetaPruner, TPImportance, custom_owner, merge_pruners, prune_conv_in_channels,
                        prune_linear_in_channels, tp_pruner_kwargs)
from ..utils import preserve_mode
from .importance import tp_magnitude

_CONSUMER_FNS = (prune_conv_in_channels, prune_linear_in_channels)
_BN = nn.modules.batchnorm._BatchNorm


def relu_moments(beta: torch.Tensor, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``relu(y)`` for ``y ~ N(beta, gamma^2)`` (the rectified Gaussian)."""
    s = gamma.abs().clamp_min(1e-12)
    a = beta / s
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(a / math.sqrt(2)))
    mean = beta * cdf + s * pdf
    second = (beta * beta + s * s) * cdf + beta * s * pdf
    return mean, (second - mean * mean).clamp_min(0)


def _is_consumer(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, nn.modules.conv._ConvNd) and m.groups == 1
                                        and not getattr(m, "transposed", False))


@torch.no_grad()
def moments(model: nn.Module, example_inputs, num_samples: int = 256, seed: int = 0,
            mode: str = "independent") -> dict[nn.Module, tuple]:
    """Input ``(mean [C], cov [C, C])`` of every Conv/Linear layer, from no data at all.

    The network input is ``N(0, 1)`` (normalised data). ``mode="independent"``: every BatchNorm outputs
    independent ``N(beta, gamma^2)`` noise, so channels entering a layer are independent (diagonal ``cov``;
    behind BN -> ReLU these are the rectified-Gaussian moments of :func:`relu_moments`). ``mode="propagated"``:
    the noise is pushed through the weights and every BatchNorm re-standardises it to mean ``beta`` and
    standard deviation ``gamma`` per channel, so ``cov`` also carries the channel correlations the preceding
    weights induce. A model without BatchNorm gets identity statistics (zero mean, identity ``cov``).
    """
    if mode not in ("independent", "propagated"):
        raise ValueError(f"moments mode must be 'independent' or 'propagated', got {mode!r}")
    consumers = [m for m in model.modules() if _is_consumer(m)]
    if not any(isinstance(m, _BN) for m in model.modules()):
        return {m: (torch.zeros(_in_features(m)), torch.eye(_in_features(m))) for m in consumers}
    g = torch.Generator().manual_seed(seed)
    stats, hooks = {}, []

    def bn_out(m, _inp, out):
        shape = [1, -1] + [1] * (out.dim() - 2)
        gamma = (m.weight if m.affine else torch.ones(out.shape[1])).abs().view(shape)
        beta = (m.bias if m.affine else torch.zeros(out.shape[1])).view(shape)
        if mode == "independent":
            return beta + gamma * torch.randn(out.shape, generator=g).to(out)
        dims = [0] + list(range(2, out.dim()))
        z = (out - out.mean(dims, keepdim=True)) / out.std(dims, keepdim=True).clamp_min(1e-6)
        return beta + gamma * z

    def record(m, inp):
        x = inp[0]
        x = x.transpose(0, 1).flatten(1) if isinstance(m, nn.modules.conv._ConvNd) else x.flatten(0, -2).t()
        mean = x.mean(1)
        xc = x - mean[:, None]
        cov = xc @ xc.t() / x.shape[1]
        stats[m] = (mean, cov if mode == "propagated" else torch.diag(cov.diagonal()))

    for m in model.modules():
        if isinstance(m, _BN):
            hooks.append(m.register_forward_hook(bn_out))
        elif _is_consumer(m):
            hooks.append(m.register_forward_pre_hook(record))
    try:
        x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
        with preserve_mode(model):
            model.eval()(torch.randn((num_samples, *x.shape[1:]), generator=g).to(x))
    finally:
        for h in hooks:
            h.remove()
    return stats


DAMP = 1e-2  # relative Tikhonov damping of the covariance (the usual OBS/GPTQ percdamp)


def _damped(cov: torch.Tensor, damp: float | None = None) -> torch.Tensor:
    damp = DAMP if damp is None else damp
    return cov + damp * cov.diagonal().mean().clamp_min(1e-8) * torch.eye(cov.shape[0])


def _in_features(m: nn.Module) -> int:
    return m.in_features if isinstance(m, nn.Linear) else m.in_channels


def _next_bn(DG, layer: nn.Module):
    """The BatchNorm right after ``layer`` in the traced graph, if any."""
    node = DG.module2node.get(layer)
    if node is None or len(node.outputs) != 1:
        return None
    nxt = node.outputs[0].module
    return nxt if isinstance(nxt, _BN) else None


def _out_weight(DG, layer: nn.Module) -> torch.Tensor:
    """Per-output weight turning pre-activation error into the units of the next BN's output."""
    bn = _next_bn(DG, layer)
    n_out = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
    if bn is None or bn.running_var is None:
        return torch.ones(n_out)
    gamma = bn.weight if bn.affine else torch.ones_like(bn.running_var)
    return gamma.detach() ** 2 / (bn.running_var + bn.eps)


def _per_input(layer: nn.Module) -> torch.Tensor:
    """``W`` as ``[out, in, k]`` (kernel positions flattened)."""
    w = layer.weight.detach()
    return w.reshape(w.shape[0], w.shape[1], -1)


class OBSImportance(TPImportance):
    """Group saliency: expected (BN-normalised) squared pre-activation error of every consumer after the
    optimal OBS compensation, under the data-free BN-Gaussian statistics. Lower = safer to prune.

    ``stats`` maps each layer to its input ``(mean, var)`` (see :func:`moments`); call ``refresh`` after the
    network changed. ``DG`` is torch-pruning's dependency graph (for the BatchNorm following a layer).
    """

    def __init__(self, stats: dict | None = None, DG=None, compensate: bool = True, normalise: bool = True):
        self.stats, self.DG, self.compensate, self.normalise = stats or {}, DG, compensate, normalise

    def refresh(self, model, example_inputs, DG=None, **kw):
        self.stats = moments(model, example_inputs, **kw)
        self.DG = DG if DG is not None else self.DG

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        n = len(group[0].idxs)
        imp = torch.zeros(n)
        found = False
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.layer, dep.pruning_fn
            if fn not in _CONSUMER_FNS or not _is_consumer(layer):
                continue
            mean, cov = self.stats.get(layer, (None, None))
            if mean is None:
                mean, cov = torch.zeros(_in_features(layer)), torch.eye(_in_features(layer))
            w = _per_input(layer)                                             # [out, in, k]
            scale = _out_weight(self.DG, layer) if self.DG is not None and self.normalise else torch.ones(w.shape[0])
            # OBS: w^2 / [H^-1]_qq, i.e. the variance of channel q that the other channels cannot explain
            resid = 1.0 / torch.linalg.inv(_damped(cov)).diagonal()
            sal = (scale[:, None] * w.pow(2).sum(2)).sum(0) * resid          # [in]
            if not self.compensate:  # the mean's contribution stays lost
                sal = sal + (scale[:, None] * (w.sum(2) * mean[None, :]).pow(2)).sum(0)
            root = torch.as_tensor(group[i].root_idxs)
            imp.scatter_add_(0, root, sal[torch.as_tensor(idxs)].float())
            found = True
        if not found:  # a group with no Conv/Linear reader (e.g. the last layer's outputs): weight norm
            return tp_magnitude(p=2)(group)
        return imp


@torch.no_grad()
def compensate_group(group, stats: dict, DG, restore_variance: bool = False) -> int:
    """Move the expected contribution of the channels ``group`` removes into each consumer's bias (or its
    following BatchNorm's running mean). Call before ``group.prune()``; returns how many layers changed."""
    changed = 0
    for dep, idxs in group:
        layer, fn = dep.layer, dep.pruning_fn
        if fn not in _CONSUMER_FNS or not _is_consumer(layer) or layer not in stats:
            continue
        mean, cov = stats[layer]
        S = torch.as_tensor(idxs)
        keep = torch.ones(cov.shape[0], dtype=torch.bool)
        keep[S] = False
        R = keep.nonzero().flatten()
        w = _per_input(layer)                                                  # [out, in, k]
        # x_S ~ mu_S + B^T (x_R - mu_R): the best linear prediction from the channels that stay
        B = torch.linalg.solve(_damped(cov[R][:, R]), cov[R][:, S]) if len(R) else cov.new_zeros(0, len(S))
        wS = w[:, S]                                                           # [out, |S|, k]
        dWR = torch.einsum("osk,rs->ork", wS, B)                               # [out, |R|, k]
        shift = torch.einsum("osk,s->o", wS, mean[S] - B.t() @ mean[R])        # [out]
        bn = _next_bn(DG, layer)
        if restore_variance and bn is not None and bn.running_var is not None:
            # the following BN keeps its output variance: its running variance shrinks by the variance lost
            resid = cov[S][:, S] - cov[S][:, R] @ B
            total = torch.einsum("oik,ij,ojk->o", w, cov, w)
            lost = torch.einsum("oik,ij,ojk->o", wS, resid, wS)
            factor = (1 - lost / total.clamp_min(1e-12)).clamp(0.05, 1)
            bn.running_var.mul_(factor.to(bn.running_var))
        if len(R):
            layer.weight.data.view(w.shape)[:, R] += dWR.to(layer.weight)
        if layer.bias is not None:
            layer.bias.add_(shift.to(layer.bias))
        else:
            if bn is None or bn.running_mean is None:
                continue  # nowhere to put it without changing the architecture
            bn.running_mean.sub_(shift.to(bn.running_mean))
        changed += 1
    return changed


def default_ignored_layers(model: nn.Module, example_inputs) -> list[nn.Module]:
    """The classifier: the last Linear (or Conv) whose width is the model's output width."""
    with torch.no_grad(), preserve_mode(model):
        out = model.eval()(*(example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)))
    width = out.shape[-1] if out.dim() == 2 else out.shape[1]
    last = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == width]
    last = last or [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == width]
    names = {m: n for n, m in model.named_modules()}
    # a classifier inside a custom layer (GATConv's lin) is protected by protecting that layer
    return [model.get_submodule(n) for n in custom_owner(model, [names[m] for m in last[-1:]], merge_pruners())]


def _macs(model, example_inputs) -> float:
    return float(macs_and_params(model, example_inputs)[0])


def prune_to_speedup(model: nn.Module, example_inputs, target_speedup: float, importance=None, *,
                     compensate: bool = False, restore_variance: bool = False, ignored_layers=None, global_pruning: bool = False,
                     max_ratio: float = 0.9, steps: int = 60, num_samples: int = 256, seed: int = 0,
                     stats_mode: str = "independent", before_step=None) -> dict:
    """Prune ``model`` in place in small torch-pruning steps until its MACs drop ``target_speedup``-fold.

    ``importance``: a torch-pruning importance (default group L2, custom layers included). ``compensate``: OBS bias compensation
    with fresh data-free statistics each step (what :func:`obs_prune` turns on). ``before_step(model)`` runs
    before every step (e.g. to refresh gradients for a gradient criterion). Returns a small report.
    """
    if target_speedup < 1:
        raise ValueError(f"target_speedup must be >= 1, got {target_speedup}")
    importance = importance if importance is not None else tp_magnitude(p=2)
    ignored = list(ignored_layers) if ignored_layers is not None else default_ignored_layers(model, example_inputs)
    with preserve_mode(model):
        model.eval()
        base = _macs(model, example_inputs)
        pruner = MetaPruner(model, example_inputs, importance=importance, pruning_ratio=max_ratio,
                            iterative_steps=steps, ignored_layers=ignored, global_pruning=global_pruning,
                            max_pruning_ratio=max_ratio, **tp_pruner_kwargs())
        needs_stats = compensate or isinstance(importance, OBSImportance)
        macs, n_steps, n_comp = base, 0, 0
        while base / macs < target_speedup and n_steps < steps:
            if before_step is not None:
                before_step(model)
            stats = moments(model, example_inputs, num_samples=num_samples, seed=seed + n_steps,
                            mode=stats_mode) if needs_stats else {}
            if isinstance(importance, OBSImportance):
                importance.stats, importance.DG = stats, pruner.DG
            for group in pruner.step(interactive=True):
                if compensate:
                    n_comp += compensate_group(group, stats, pruner.DG, restore_variance)
                group.prune()
            n_steps += 1
            macs = _macs(model, example_inputs)
    return {"base_macs": base, "macs": macs, "speedup": base / macs, "steps": n_steps, "compensated_layers": n_comp}


def obs_prune(model: nn.Module, example_inputs, target_speedup: float, *, ranking: str = "obs",
              compensate: bool = True, restore_variance: bool = True, ignored_layers=None,
              global_pruning: bool = True, steps: int = 60, num_samples: int = 1024, seed: int = 0,
              stats_mode: str = "propagated") -> dict:
    """Data-free, finetune-free OBS group pruning of ``model`` (in place) to ``target_speedup`` x fewer MACs.

    ``ranking``: ``"obs"`` (:class:`OBSImportance`) or ``"l2"`` (group L2 picks the channels, OBS
    compensates). ``compensate``: fold the removed channels' predictable part into the remaining weights and
    bias. ``restore_variance``: keep the next BatchNorm's output variance (a data-free stand-in for BN
    recalibration). ``global_pruning``: one saliency threshold across groups (costs are in normalised
    units), capped at 90% of any group. ``stats_mode``/``num_samples``: see :func:`moments`.
    Returns ``{"base_macs", "macs", "speedup", "steps", "compensated_layers"}``.
    """
    if ranking not in ("obs", "l2"):
        raise ValueError(f"ranking must be 'obs' or 'l2', got {ranking!r}")
    importance = OBSImportance(compensate=compensate) if ranking == "obs" else None
    return prune_to_speedup(model, example_inputs, target_speedup, importance, compensate=compensate,
                            restore_variance=restore_variance, ignored_layers=ignored_layers,
                            global_pruning=global_pruning, steps=steps, num_samples=num_samples, seed=seed,
                            stats_mode=stats_mode)
