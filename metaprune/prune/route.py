"""The pipeline's "reach the target" stage: one route per kind of run, one result type.

- one-shot (:func:`metaprune.prune.prune`): a MACs or parameter target, any criterion but OBS;
- latency (:func:`metaprune.prune.latency.prune_to_latency`): ``target.latency_speedup``, measured;
- OBS (:func:`metaprune.prune.obs.obs_prune`): data-free, with weight compensation;
- at init (:func:`metaprune.prune.at_init.prune_at_init`): ``stage=init``, SNIP or magnitude.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..data import DataBundle
from ..metrics import macs_and_params
from .pruner import PruneResult, prune
from .ranking import ATTENTION_RULE, prune_ranked_on_val
from .safety import check_output_shapes, output_shapes


@dataclass
class Pruned:
    """What a route hands on: the pruned network (on the run's device), the measured result, and the
    latency search's record (``target.latency_speedup`` only)."""
    model: nn.Module
    result: PruneResult
    latency_search: dict | None = None
    ranking: dict | None = None  # prune.global_pruning=val: the ranking chosen and each one's val accuracy


def latency_dtype(cfg, device) -> torch.dtype:
    return torch.bfloat16 if (device.type == "cuda" and cfg.latency.dtype == "bfloat16") else torch.float32


def reach_target(model: nn.Module, data: DataBundle, cfg, device, score=None) -> Pruned:
    """Prune ``model`` to ``cfg.target`` by the route the run asks for (``cfg``: a PruneConfig). ``score(network)``:
    how ``prune.global_pruning=val`` rates each ranking's pruned network (its val accuracy, batch norms
    re-estimated)."""
    calib = next(iter(data.loader("train", cfg.finetune.batch_size, seed=cfg.finetune.seed)))
    opts, x = cfg.prune, data.example_inputs().to(device)
    round_to = opts.round_to
    measured = round_to == "auto" or (round_to is None and cfg.target_kind == "latency_speedup")
    if measured:
        from ..hardware import default_round_to

        round_to = default_round_to(device, latency_dtype(cfg, device))
    ranking = opts.global_pruning if opts.global_pruning == ATTENTION_RULE else bool(opts.global_pruning)
    kw = dict(importance=opts.importance, global_pruning=ranking, round_to=round_to,
              ignored_layers=tuple(opts.ignored_layers), calibration=(calib[0].to(device), calib[1].to(device)),
              seed=cfg.seed, attention_unit=opts.attention_unit)
    if cfg.stage == "init" or opts.importance == "obs":
        return Pruned(model, _prune_special(model, x, cfg.stage, cfg.target["speedup"], kw, opts))
    if cfg.target_kind == "latency_speedup":
        from .latency import prune_to_latency

        result, search = prune_to_latency(model, x, float(cfg.target["latency_speedup"]),
                                          batch_size=cfg.latency.batch_size, device=device,
                                          dtype=latency_dtype(cfg, device), runs=cfg.latency.runs, **kw)
        return Pruned(model.to(device), result, search)
    one_shot = prune
    if measured:  # a measured multiple is lowered where this network cannot reach the target at it
        from .latency import prune_measured_round_to as one_shot
    to_target = lambda net, **more: one_shot(net, x, target_speedup=cfg.target.get("speedup"),  # noqa: E731
                                             target_params=cfg.target.get("params"), **{**kw, **more})
    if opts.global_pruning == "val":  # both rankings, the better on val kept (metaprune.prune.ranking)
        net, result, record = prune_ranked_on_val(model, lambda net, g: to_target(net, global_pruning=g), score,
                                                  margin=float(opts.ranking_margin))
        return Pruned(net, result, ranking=record)
    return Pruned(model, to_target(model))


def _prune_special(model, x, stage_name, speedup, kw, opts) -> PruneResult:
    """Pruning at initialisation (SNIP / magnitude) or data-free OBS with weight compensation; both step
    through torch-pruning's own pruner and report in the same PruneResult shape as :func:`prune`."""
    base_macs, base_params = macs_and_params(model, x)
    shapes = output_shapes(model, x)
    ranked_globally = opts.global_pruning if opts.global_pruning is not None else stage_name != "init"  # OBS: global
    t0 = time.perf_counter()
    if stage_name == "init":
        from .at_init import prune_at_init

        crit = opts.init_criterion
        rep = prune_at_init(model, x, float(speedup), criterion=crit,
                            batch=kw["calibration"] if crit == "snip" else None)
        name = f"init:{crit}"
    else:
        from .obs import obs_prune

        rep = obs_prune(model, x, float(speedup), global_pruning=ranked_globally)
        name = "obs"
    check_output_shapes(model, x, shapes)
    macs, params = macs_and_params(model, x)
    return PruneResult(base_macs=base_macs, pruned_macs=macs, base_params=base_params, pruned_params=params,
                       speedup=base_macs / macs, param_ratio=base_params / params, ratio=float("nan"),
                       target={"speedup": float(speedup)}, importance=name,
                       global_pruning=ranked_globally, round_to=None,
                       protected=[], seconds=time.perf_counter() - t0, channels={"steps": rep.get("steps")})
