"""The one training loop: zoo members, finetuning after pruning and baselines all train here.

``fit(model, data, TrainConfig(...))`` trains on ``data.train``, evaluates on ``data.val`` each epoch and
returns the history. SGD or AdamW; cosine, multistep or constant schedule with optional warm-up; label
smoothing; bf16 autocast on CUDA; ``channels_last``; a tqdm bar with loss and accuracy; resumable
epoch checkpoints; and an ``after_backward`` hook (e.g. DepGraph's sparse-learning regulariser).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..io import atomic_dir
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


def save_resume(path, **state) -> None:
    """Write a resume state (state dicts, counters, histories) to ``path/state.pt`` atomically."""
    with atomic_dir(Path(path)) as tmp:
        torch.save(state, tmp / "state.pt")


def load_resume(path, device) -> dict | None:
    """The state :func:`save_resume` wrote to ``path``, or None if there is none (tensors only: never unpickles
    code)."""
    f = Path(path) / "state.pt"
    return torch.load(f, map_location=device, weights_only=True) if f.is_file() else None


def fit(model: nn.Module, data, cfg: TrainConfig | dict | None = None, *, resume_dir=None,
        after_backward: Callable[[nn.Module], None] | None = None, logger=None, desc: str = "train") -> list[dict]:
    """Train ``model`` on ``data.train`` (a DataBundle), validating on ``data.val`` after each epoch.

    ``resume_dir``: a directory for an epoch checkpoint; a later call with the same directory continues
    where the last one stopped. Returns the per-epoch history (train loss/acc, val loss/acc, lr).
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
    state = load_resume(resume_dir, device) if resume_dir else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, history, best = state["epoch"], state["history"], state["best"]
        torch.set_rng_state(state["rng"])
    steps_per_epoch = max(1, len(train_loader))
    total = cfg.epochs * steps_per_epoch
    for epoch in range(start, cfg.epochs):
        model.train()
        if hasattr(train_loader, "generator"):
            train_loader.generator.manual_seed(cfg.seed + epoch)
        bar = tqdm(train_loader, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not cfg.progress, dynamic_ncols=True)
        seen, correct, loss_sum = 0, 0, 0.0
        for i, (x, y) in enumerate(bar):
            step = epoch * steps_per_epoch + i
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
        val = evaluate(model, val_loader, device, cfg.amp)
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
                        best=best, rng=torch.get_rng_state())
    if cfg.select == "best_val" and best is not None:
        model.load_state_dict(best["state"])
    return history
