"""The one training loop: zoo members, finetuning after pruning and baselines all train here.

``fit(model, data, TrainConfig(...))`` trains on ``data.train``, evaluates on ``data.val`` each epoch and
returns the history. SGD or AdamW; cosine, multistep or constant schedule with optional warm-up; label
smoothing; bf16 autocast on CUDA; ``channels_last``; a tqdm bar with loss and accuracy; resumable
epoch checkpoints; and an ``after_backward`` hook (e.g. DepGraph's sparse-learning regulariser).
"""
from __future__ import annotations

import copy
import math
import os
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..io import MAX_WEIGHTS_BYTES, CheckpointError, atomic_dir, read_torch, state_dict_diff
from ..utils import preserve_mode


@dataclass
class TrainConfig:
    epochs: int = 10
    optimizer: str = "sgd"          # sgd | adamw
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"        # cosine | multistep | constant
    milestones: tuple = (0.5, 0.75)  # multistep: fractions of the run
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    batch_size: int = 128
    amp: bool = True                # bf16 autocast, CUDA only
    channels_last: bool = False
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    select: str = "last"            # last | best_val: which weights fit() leaves in the model
    max_steps: int | None = None    # stop after this many optimizer steps (the schedule spans them): budgets
                                    # below one epoch, e.g. recovery after a metanetwork rewrite in meta-validation
    val_each_epoch: bool = True     # evaluate on val after each epoch (history, best_val); off for short recoveries
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict | None) -> "TrainConfig":
        d = dict(d or {})
        refuse_unknown(cls, d, "training")
        if "milestones" in d and d["milestones"] is not None:
            d["milestones"] = tuple(d["milestones"])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        checks = [
            (self.optimizer in ("sgd", "adamw"), "optimizer", "sgd or adamw"),
            (self.schedule in ("cosine", "multistep", "constant"), "schedule", "cosine, multistep or constant"),
            (self.epochs >= 0, "epochs", ">= 0"),
            (self.lr > 0, "lr", "> 0"),
            (self.batch_size > 0, "batch_size", "> 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.select in ("last", "best_val"), "select", "last or best_val"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", ">= 1 or null"),
            (self.val_each_epoch or self.select == "last", "val_each_epoch", "true when select=best_val"),
        ]
        check_options(self, checks, "training option ")


def refuse_unknown(cls, d: dict, what: str) -> None:
    """One ValueError naming the keys of ``d`` that are not fields of the dataclass ``cls``."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; known: {sorted(names)}")


def check_options(cfg, checks, label: str) -> None:
    """``checks``: ``(ok, key, what it must be)``; the first failing one is a ValueError naming
    ``{label}{key}`` and its value."""
    for ok, key, want in checks:
        if not ok:
            raise ValueError(f"{label}{key}={getattr(cfg, key)!r} is invalid: must be {want}")


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _autocast(device: torch.device, amp: bool):
    enabled = amp and device.type == "cuda"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def reestimate_norms(model: nn.Module, inputs) -> nn.Module:
    """Re-estimate every batch norm's running statistics as the plain average over the batches ``inputs`` yields
    (forward passes only, no weight changes). Returns ``model`` in eval mode; a network without batch norms is left
    as it is and ``inputs`` is not read."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model.eval()
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a plain average over the batches
        m.train()
    for x in inputs:
        model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def recalibrate_norms(model: nn.Module, data, batches: int, batch_size: int = 128, seed: int = 0,
                      device="cpu") -> nn.Module:
    """Re-estimate every batch norm's running statistics over ``batches`` batches of the train split
    (:func:`reestimate_norms`). A rewrite that changes the weights in front of a batch norm leaves its stored
    statistics stale, and in eval mode the network then falls to chance although its function is intact. Returns
    ``model`` in eval mode; ``batches=0`` or a network without batch norms leaves the statistics as they are."""
    if not batches:
        return model.eval()

    def inputs():  # the loader is built only when a batch norm reads it
        loader = data.loader("train", batch_size, shuffle=True, seed=seed)
        for _, (x, _) in zip(range(batches), loader):
            yield x.to(device)

    return reestimate_norms(model, inputs())


def recalibrated_accuracy(model: nn.Module, data, batches: int, split: str = "val", batch_size: int = 128,
                          seed: int = 0, device="cpu") -> float:
    """Accuracy on ``split`` of a copy of ``model`` whose batch norms are re-estimated on ``batches`` train batches
    (:func:`recalibrate_norms`): how a freshly pruned network scores once its stale statistics are refreshed.
    ``model`` is left untouched."""
    net = recalibrate_norms(copy.deepcopy(model), data, batches, batch_size, seed, device)
    return evaluate(net, data.loader(split, 512, shuffle=False), device)["acc"]


RECALIBRATE_BATCHES = 20  # train batches that re-estimate each ranking candidate's batch norms before it is scored


def probe_trained(model: nn.Module, data, steps: int, lr: float, batch_size: int = 128, seed: int = 0,
                  device="cpu") -> nn.Module:
    """A copy of ``model`` whose batch norms are re-estimated on ``RECALIBRATE_BATCHES`` train batches and which then
    trains for ``steps`` SGD steps (momentum 0.9, constant ``lr``) on train batches, in eval mode. ``model`` is left
    untouched."""
    net = recalibrate_norms(copy.deepcopy(model), data, RECALIBRATE_BATCHES, batch_size, seed, device).train()
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    with torch.enable_grad():
        for _, (x, y) in zip(range(steps), data.loader("train", batch_size, shuffle=True, seed=seed)):
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


def probed_val_loss(model: nn.Module, data, steps: int, lr: float, batch_size: int = 128, seed: int = 0,
                    device="cpu") -> float:
    """Val cross-entropy of :func:`probe_trained`'s copy: how readily a freshly pruned network learns (meant for 4x
    and beyond, where val accuracy right after pruning sits near chance for every candidate; a very thin network
    can diverge in these few steps and still recover over a full finetune, which is why ``ranking_scorer`` uses it
    only when asked). ``model`` is left untouched."""
    net = probe_trained(model, data, steps, lr, batch_size, seed, device)
    return evaluate(net, data.loader("val", 512, shuffle=False), device)["loss"]


def check_probe_steps(n, key: str = "probe_steps") -> int:
    """A ranking probe's step count: an integer >= 0, else one ``ValueError`` naming ``key``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{key}={n!r} must be an integer >= 0 (SGD steps per candidate; 0: scored by val accuracy)")
    return n


def ranking_scorer(data, batch_size: int = 128, seed: int = 0, device="cpu", probe_steps: int = 0,
                   lr: float = 0.01) -> Callable[[nn.Module], float]:
    """The score that chooses a network's ranking on val (:func:`metaprune.prune.ranking.prune_ranked_on_val`):
    a pruned candidate's val accuracy once its batch norms are re-estimated on ``RECALIBRATE_BATCHES`` train batches
    (:func:`recalibrated_accuracy`), or with ``probe_steps > 0`` its val loss after that many SGD steps at ``lr``
    on a copy (:func:`probed_val_loss`; lower is better). The scorer's ``key`` names what it measures and
    ``higher_is_better`` its direction. One scorer for prune.py, meta-training and the benchmark, so all three
    choose alike."""
    if check_probe_steps(probe_steps):
        def score(net):
            return probed_val_loss(net, data, probe_steps, lr, batch_size, seed, device)
        score.key, score.higher_is_better = f"val_loss_after_{probe_steps}_steps", False
    else:
        def score(net):
            return recalibrated_accuracy(net, data, RECALIBRATE_BATCHES, "val", batch_size, seed, device)
        score.key, score.higher_is_better = "val_acc", True
    return score


@torch.no_grad()
def evaluate(model: nn.Module, loader, device="auto", amp: bool = True) -> dict:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``loader``."""
    device = pick_device(device) if isinstance(device, str) else device
    correct, total, loss = 0, 0, 0.0
    with preserve_mode(model), _autocast(device, amp):
        model.eval().to(device)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            out = model(x).float()
            loss += F.cross_entropy(out, y, reduction="sum").item()
            correct += (out.argmax(1) == y).sum().item()
            total += len(y)
    return {"acc": correct / max(total, 1), "loss": loss / max(total, 1)}


def _optimizer(model: nn.Module, cfg: TrainConfig):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, total: int, warmup: int = 0, schedule: str = "cosine", milestones=(),
              gamma: float = 0.1) -> float:
    """Learning-rate multiplier at ``step`` of ``total`` (both training loops): linear warm-up over ``warmup``
    steps, then ``cosine`` decay to 0, ``multistep`` (times ``gamma`` at each fraction in ``milestones``) or
    ``constant``."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * frac))
    if schedule == "multistep":
        return gamma ** sum(frac >= m for m in milestones)
    return 1.0


STATE = "state.pt"
MAX_STATE_BYTES = MAX_WEIGHTS_BYTES  # weights plus optimizer moments: bounded like a weights file


class ResumeError(CheckpointError):
    """Resume state that cannot be read, or that does not belong to the run asked to continue from it."""


def save_resume(path, **state) -> None:
    """Write a resume state (state dicts, counters, histories, the run's ``recipe``) to ``path/state.pt``
    atomically."""
    with atomic_dir(Path(path)) as tmp:
        torch.save(state, tmp / STATE)


def load_resume(path, device, *, model: nn.Module, opt: torch.optim.Optimizer, weights: str, counter: str,
                total: int, recipe: dict, entries: dict, required: bool = False) -> dict | None:
    """The state :func:`save_resume` wrote to ``path``, checked against the run about to use it; None when there
    is none and the run did not ask for it (``required``).

    Trusted only after every check: a bounded regular file read with ``weights_only`` (never unpickles code);
    the ``entries`` (name -> type) present; every tensor finite; ``state[weights]`` with the keys, shapes and dtypes of
    ``model``; ``state["opt"]`` matching ``opt``'s parameter groups; ``state[counter]`` an integer in
    ``[0, total]``; and the stored ``recipe`` (the settings that shape the trajectory) equal to this run's.
    Anything else is a :class:`ResumeError` naming the file and what differs; the file is never modified.
    """
    f = Path(path) / STATE
    old = Path(path).with_name(f".{Path(path).name}.old") / STATE
    if not os.path.lexists(f) and os.path.lexists(old):  # killed between atomic_dir's two renames: the old one
        f = old                                           # is complete
    if not os.path.lexists(f):
        if required:
            raise ResumeError(f"{f}: no resume state to continue from; drop resume=true to start the run afresh")
        return None
    try:
        state = read_torch(f, device, MAX_STATE_BYTES, "resume state")
    except CheckpointError as e:
        raise ResumeError(str(e)) from None
    check_resume(state, f, model=model, opt=opt, weights=weights, counter=counter, total=total, recipe=recipe,
                 entries=entries)
    return state


def check_resume(state, source, *, model, opt, weights, counter, total, recipe, entries) -> None:
    """The checks of :func:`load_resume` on a loaded ``state``; one :class:`ResumeError` listing every problem."""
    def refuse(problems):
        raise ResumeError(f"{source}: resume state refused: {'; '.join(problems)}. Start a new run instead "
                          "(another name, or without resume)")

    if not isinstance(state, dict):
        refuse([f"expected a mapping of entries, found {type(state).__name__}"])
    missing = [k for k in entries if k not in state]
    wrong = [f"{k} is {type(state[k]).__name__}, expected {_type_names(t)}" for k, t in entries.items()
             if k in state and (not isinstance(state[k], t) or isinstance(state[k], bool) and t is int)]
    if missing or wrong:
        refuse(([f"missing {', '.join(missing)}"] if missing else []) + wrong)
    bad = [k for k, v in _tensors(state) if v.is_floating_point() and not torch.isfinite(v).all()]
    problems = [f"NaN or Inf values in {len(bad)} tensor(s): {', '.join(bad[:5])}"] if bad else []
    saved, current = _flatten(state["recipe"]), _flatten(recipe)
    show = lambda d, k: repr(d[k]) if k in d else "absent"  # noqa: E731
    problems += [f"{k} changed: state {show(saved, k)}, this run {show(current, k)}"
                 for k in sorted(set(saved) | set(current)) if saved.get(k, _ABSENT) != current.get(k, _ABSENT)]
    own = model.state_dict()
    problems += weights_diff(state[weights], own, weights)
    best = state.get("best")
    if isinstance(best, dict) and isinstance(best.get("state"), dict):  # fit(select="best_val") keeps a copy
        problems += weights_diff(best["state"], own, "best.state")
    problems += _optimizer_diff(state["opt"], opt)
    step = state[counter]
    if not 0 <= step <= total:
        problems.append(f"{counter}={step} is outside [0, {total}]")
    if problems:
        refuse(problems)


_ABSENT = object()


def weights_diff(saved: dict, own: dict, what: str) -> list[str]:
    """How the state dict ``saved`` differs from ``own`` in keys, shapes and dtypes (empty when it fits)."""
    if not all(isinstance(v, torch.Tensor) for v in saved.values()):
        return [f"{what} holds values that are not tensors"]
    d = state_dict_diff(saved, own)  # any dtype change: load_state_dict would cast silently

    def some(items):
        return "; ".join(items[:3]) + (" ..." if len(items) > 3 else "")

    dtype = [f"{k} {saved[k].dtype} vs {own[k].dtype}" for k in d["dtype"]]
    shape = [f"{k} {list(saved[k].shape)}, the run builds {list(own[k].shape)}" for k in d["shape"]]
    return [text for key, text in (("dtype", f"{what} dtypes differ (state vs run): {some(dtype)}"),
                                   ("shape", f"{what} shapes differ: state has {some(shape)}"),
                                   ("missing", f"{what} lacks {d['missing'][:5]}{' ...' if len(d['missing']) > 5 else ''}"),
                                   ("unexpected", f"{what} has unexpected {d['unexpected'][:5]}"
                                                  f"{' ...' if len(d['unexpected']) > 5 else ''}")) if d[key]]


def _optimizer_diff(saved: dict, opt: torch.optim.Optimizer) -> list[str]:
    """How an optimizer state dict differs from what ``opt`` would load: groups, options, per-parameter shapes."""
    own = opt.state_dict()
    if not isinstance(saved.get("state"), dict) or not isinstance(saved.get("param_groups"), list):
        return ["opt is not an optimizer state (no 'state' and 'param_groups')"]
    groups = saved["param_groups"]
    if len(groups) != len(own["param_groups"]) or any(
            not isinstance(g, dict) or len(g.get("params", ())) != len(o["params"])
            for g, o in zip(groups, own["param_groups"])):
        return [f"opt has {[len(g.get('params', ())) if isinstance(g, dict) else '?' for g in groups]} parameters "
                f"per group, the run's optimizer {[len(o['params']) for o in own['param_groups']]}"]
    out = [f"opt group {i} options {sorted(set(g) ^ set(o))} differ (another optimizer?)"
           for i, (g, o) in enumerate(zip(groups, own["param_groups"])) if set(g) != set(o)]
    params = {i: p for g, o in zip(opt.param_groups, own["param_groups"]) for i, p in zip(o["params"], g["params"])}
    index = {i for g in groups for i in g["params"]}
    if index != set(params) or not set(saved["state"]) <= index:
        return out + ["opt parameter indices do not match the run's optimizer"]
    bad = []
    for i, st in saved["state"].items():
        moments = {k: v for k, v in (st.items() if isinstance(st, dict) else ())
                   if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape != params[i].shape}
        if not isinstance(st, dict) or moments:
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in moments.items()) or "malformed"
            bad.append(f"parameter {i}: {shapes} vs {list(params[i].shape)}")
    if bad:
        more = " ..." if len(bad) > 3 else ""
        out.append(f"opt state does not fit {len(bad)} parameter(s): {'; '.join(bad[:3])}{more}")
    return out


def _tensors(obj, prefix: str = ""):
    """``(dotted path, tensor)`` for every tensor inside nested dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i))


def _flatten(d: dict, prefix: str = "") -> dict:
    """Nested settings as ``{"a.b": value}``, tuples as lists (so a stored recipe compares equal)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _type_names(t) -> str:
    return " or ".join(x.__name__ for x in (t if isinstance(t, tuple) else (t,)))


# What a fit resume state holds, and the TrainConfig fields that may change between the runs (they do not change
# the weights a run reaches); every other field is part of the recipe and must match.
_FIT_ENTRIES = {"model": dict, "opt": dict, "epoch": int, "history": list, "best": (dict, type(None)),
                "rng": torch.Tensor, "recipe": dict}
_NOT_RECIPE = ("progress", "device", "num_workers")


def fit(model: nn.Module, data, cfg: TrainConfig | dict | None = None, *, resume_dir=None,
        after_backward: Callable[[nn.Module], None] | None = None, logger=None, desc: str = "train") -> list[dict]:
    """Train ``model`` on ``data.train`` (a DataBundle), validating on ``data.val`` after each epoch.

    ``resume_dir``: a directory for an epoch checkpoint; a later call with the same directory continues
    where the last one stopped, after :func:`load_resume` checked the state belongs to this run (same
    architecture and settings) and refused it otherwise. Returns the per-epoch history (train loss/acc,
    val loss/acc, lr).
    """
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    train_loader = data.loader("train", cfg.batch_size, seed=cfg.seed, num_workers=cfg.num_workers)
    val_loader = data.loader("val", 512, shuffle=False, num_workers=cfg.num_workers)
    opt = _optimizer(model, cfg)
    base_lrs = [g["lr"] for g in opt.param_groups]  # before a resumed state overwrites them with decayed ones
    history, start, best = [], 0, None
    steps_per_epoch = max(1, len(train_loader))
    total = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    epochs = -(-total // steps_per_epoch)  # the epochs max_steps reaches into
    recipe = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name not in _NOT_RECIPE}
    state = load_resume(resume_dir, device, model=model, opt=opt, weights="model", counter="epoch", total=epochs,
                        recipe=recipe, entries=_FIT_ENTRIES) if resume_dir else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, history, best = state["epoch"], state["history"], state["best"]
        torch.set_rng_state(state["rng"])
    for epoch in range(start, epochs):
        model.train()
        if hasattr(train_loader, "generator"):
            train_loader.generator.manual_seed(cfg.seed + epoch)
        bar = tqdm(train_loader, desc=f"{desc} {epoch + 1}/{epochs}", leave=False,
                   disable=not cfg.progress, dynamic_ncols=True)
        seen, correct, loss_sum = 0, 0, 0.0
        for i, (x, y) in enumerate(bar):
            step = epoch * steps_per_epoch + i
            if step >= total:
                break
            factor = lr_factor(step, total, int(cfg.warmup_epochs * steps_per_epoch), cfg.schedule, cfg.milestones,
                               cfg.gamma)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * factor
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.channels_last and x.dim() == 4:
                x = x.to(memory_format=torch.channels_last)
            with _autocast(device, cfg.amp):
                out = model(x)
                loss = F.cross_entropy(out.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward(model)
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            n = len(y)
            seen += n
            loss_sum += loss.item() * n
            correct += (out.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        val = evaluate(model, val_loader, device, cfg.amp) if cfg.val_each_epoch else {"loss": None, "acc": None}
        rec = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
               "val_loss": val["loss"], "val_acc": val["acc"], "lr": opt.param_groups[0]["lr"]}
        history.append(rec)
        if logger is not None:
            logger.log({f"{desc}/{k}": v for k, v in rec.items()})
        if cfg.select == "best_val" and (best is None or val["acc"] > best["acc"]):
            best = {"acc": val["acc"], "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if resume_dir:
            save_resume(resume_dir, model=model.state_dict(), opt=opt.state_dict(), epoch=epoch + 1, history=history,
                        best=best, rng=torch.get_rng_state(), recipe=recipe)
    if cfg.select == "best_val" and best is not None:
        model.load_state_dict(best["state"])
    return history
