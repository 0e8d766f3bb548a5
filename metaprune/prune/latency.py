"""Prune to a *measured* latency speedup on the current device, not a MACs count.

MACs are a poor proxy for time: odd channel counts fall off vectorised and tensor-core fast paths. Here the
search variable is still the MACs target of :func:`metaprune.prune.prune` (so grouping, criteria and
rounding are the same), but each candidate is pruned on a copy and *timed* at the requested batch size and
dtype; bisection finds the smallest MACs reduction whose measured latency ratio reaches the target.
:func:`prune_measured_round_to` is :func:`prune` with the channel multiple measured for the device
(``prune.round_to=auto``), lowered where a narrow network cannot reach the target at it.
"""
from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
import torch.nn as nn

from ..hardware import CANDIDATES
from ..metrics import autocast_for, batch_of, sync
from ..utils import preserve_mode
from .pruner import PruneResult, UnreachableTarget, prune


@torch.no_grad()
def paired_speedup(base: nn.Module, cand: nn.Module, inputs, batch_size=1, device="cpu",
                   dtype=torch.float32, runs: int = 15) -> tuple[float, float, float]:
    """Median latency of ``base`` and ``cand`` on ``batch_of(inputs, batch_size)`` (an example tensor, or a
    per-example shape) timed alternately (so drift and background load hit both alike); returns
    (base_ms, cand_ms, base_ms / cand_ms)."""
    device = torch.device(device)
    x = batch_of(inputs, batch_size, device)
    models = [base.eval().to(device), cand.eval().to(device)]
    times = ([], [])
    with autocast_for(device, dtype):
        for i in range(runs + 3):
            for j in (0, 1) if i % 2 == 0 else (1, 0):
                sync(device)
                t0 = time.perf_counter()
                models[j](x)
                sync(device)
                if i >= 3:
                    times[j].append((time.perf_counter() - t0) * 1e3)
    b, c = statistics.median(times[0]), statistics.median(times[1])
    return b, c, b / c


def prune_measured_round_to(model: nn.Module, example_inputs, round_to: int | None, **prune_kwargs) -> PruneResult:
    """:func:`prune` with ``round_to`` measured for the device (``metaprune.hardware.default_round_to``, what
    ``prune.round_to=auto`` asks for). The measured multiple is a speed preference, not the user's constraint:
    where the target cannot be reached at it (narrow layers: a 12-channel layer kept at a multiple of 8 can lose
    only 4 channels), the largest smaller candidate multiple that reaches it is used, with a warning naming both;
    ``result.round_to`` records the multiple used. An explicit ``round_to`` is never lowered: call :func:`prune`.
    """
    tried = []
    for r in [round_to] + [c for c in sorted(CANDIDATES, reverse=True) if round_to and c < round_to]:
        try:
            result = prune(model, example_inputs, round_to=r, **prune_kwargs)  # all or nothing: retrying is safe
        except UnreachableTarget:
            tried.append(r)
            if r is None or r <= 1:
                raise
            continue
        if tried:
            warnings.warn(f"round_to=auto: the target is unreachable at the measured channel multiple {round_to} "
                          f"(this network's layers are too narrow), so round_to={r} is used", stacklevel=2)
        return result


def prune_to_latency(model: nn.Module, example_inputs: torch.Tensor, target_latency_speedup: float,
                     batch_size: int = 1, device="cpu", dtype=torch.float32, runs: int = 15,
                     max_macs_speedup: float = 16.0, tolerance: float = 0.03, max_steps: int = 8,
                     timer=None, **prune_kwargs) -> tuple[PruneResult, dict]:
    """Prune ``model`` in place until base latency / pruned latency >= ``target_latency_speedup``.

    ``prune_kwargs`` go to :func:`prune` (importance, round_to, global_pruning, ignored_layers...). ``timer``
    replaces :func:`paired_speedup` (same signature) — a cost model, or a fake in tests. Returns the final
    PruneResult and a record of the search: every candidate's MACs speedup and measured latency.
    """
    if not target_latency_speedup > 1:
        raise ValueError(f"target.latency_speedup={target_latency_speedup} must be > 1 (base / pruned latency)")
    t0 = time.perf_counter()
    base = copy.deepcopy(model).eval()
    timer = timer or paired_speedup
    trials = []

    def measure(s: float):
        cand = copy.deepcopy(model)
        res = prune(cand, example_inputs, target_speedup=s, **prune_kwargs)
        b, c, r = timer(base, cand, example_inputs, batch_size, device, dtype, runs)
        trials.append({"macs_speedup": res.speedup, "base_ms": b, "latency_ms": c, "latency_speedup": r})
        return r

    lo, hi, cap = 1.0, None, max_macs_speedup
    s = target_latency_speedup  # MACs and time are proportional at best, so start at the target itself
    for _ in range(max_steps):  # grow until the target is met, then bisect
        try:
            got = measure(s)
        except ValueError:  # more MACs reduction than the network allows
            cap = s * 0.98
            s = (lo + cap) / 2 if hi is None else (lo + hi) / 2
            continue
        if got >= target_latency_speedup:
            hi = s
            if got <= target_latency_speedup * (1 + tolerance):
                break
        else:
            lo = s
        if hi is None:
            if lo >= cap:
                break
            s = min(s * 1.5, cap)
        else:
            s = (lo + hi) / 2
    if hi is None:
        best = max(trials, key=lambda t: t["latency_speedup"]) if trials else None
        raise ValueError(
            f"target.latency_speedup={target_latency_speedup} is not reachable on {device}: the best measured was "
            f"{best['latency_speedup']:.2f}x at {best['macs_speedup']:.2f}x fewer MACs (round_to={prune_kwargs.get('round_to')})" if best else
            f"target.latency_speedup={target_latency_speedup}: no prunable configuration found")
    with preserve_mode(model):  # only the final prune and timing touch the caller's model
        result = prune(model, example_inputs, target_speedup=hi, **prune_kwargs)
        base_ms, final_ms, ratio = timer(base, model, example_inputs, batch_size, device, dtype, 2 * runs)
    model.to("cpu")
    search = {"base_latency_ms": base_ms, "pruned_latency_ms": final_ms, "latency_speedup": ratio,
              "macs_speedup": result.speedup, "batch_size": batch_size, "dtype": str(dtype).replace("torch.", ""),
              "device": str(device), "trials": trials, "seconds": time.perf_counter() - t0}
    return result, search
