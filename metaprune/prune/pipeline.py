"""The ``prune.py`` run with plain arguments, in flow order: load -> (metanetwork -> recovery finetune) ->
groups -> importance -> reach the target -> finetune -> export -> report.

``run_prune(cfg)`` takes the composed config as a dict (see ``configs/prune.yaml``; validated up front as a
:class:`~metaprune.prune.config.PruneConfig`); ``transform`` is the hook where a metanetwork plugs in::

    transform(model: nn.Module, data: DataBundle) -> nn.Module

It receives the loaded, trained network (on the run's device, eval mode) and returns the network to prune
(the same object modified in place, or a new one of the same architecture carrying ``metaprune_spec``).
Every stage is timed; accuracy in the report is on the TEST split, selection (``finetune.select``) uses val.
Nothing is written until the run succeeds: the result directory appears atomically.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..data import DataBundle
from ..export import export_verified
from ..io import atomic_dir, atomic_write_json, save_model, write_result_marker
from ..io import check_output_dir as check_output_path
from ..logging import Logger
from ..metanet.resolve import recalibration_batches, recovery_epochs, rewrite_for_pruning
from ..metrics import latency, macs_and_params
from ..train import evaluate, fit, pick_device, ranking_scorer, recalibrate_norms, seed_everything
from .config import PruneConfig
from .load import load
from .report import add_exports, build_report
from .route import reach_target

Transform = Callable[[nn.Module, DataBundle], nn.Module]


def check_output_dir(cfg: PruneConfig) -> Path:
    """The run's ``output_dir``, refused before anything is loaded if replacing it could destroy an input or
    anything but a previous result (see :func:`metaprune.io.check_output_dir`)."""
    inputs = [cfg.model.checkpoint, cfg.model.onnx, cfg.metanet_checkpoint, cfg.data.get("root")]
    return check_output_path(cfg.output_dir, cfg.overwrite, inputs=inputs, kind="prune")


def run_prune(cfg: dict, transform: Transform | None = None, logger=None, data: DataBundle | None = None,
              progress: bool = True) -> dict:
    """Run the whole pipeline from a plain config dict and return the report (also saved as report.json).

    ``transform``: overrides the metanetwork of ``cfg["metanet"]``. ``data``: a prebuilt DataBundle (tests).
    ``logger``: a ``metaprune.logging.Logger``, or a zero-argument factory called once pruning has succeeded
    (so a refused input or target starts no wandb run) and finished at the end. ``cfg["threads"]``: CPU threads for
    this run (restored afterwards). Every config value is checked before anything is loaded.
    """
    threads = torch.get_num_threads()
    stages = Stages(logger)
    try:
        run = PruneConfig.from_dict(cfg, progress)
        out = check_output_dir(run)
        if run.threads:
            torch.set_num_threads(run.threads)
        return _run_prune(run, out, transform, data, stages)
    finally:
        torch.set_num_threads(threads)
        if stages.own_logger is not None:
            stages.own_logger.finish()


def _run_prune(cfg: PruneConfig, out: Path, transform, data, stages: Stages) -> dict:
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    with stages("load"):
        model, data = load(cfg, device, data)
    with stages("base_eval"):
        acc = {"base": _acc(model, data, "test", device), "base_val": _acc(model, data, "val", device)}
    with stages("base_latency"):
        lat = {"base": _latency(model, data, cfg, device)}
    model, metanet, acc["transformed"] = apply_metanet_stage(model, data, cfg, transform, device, stages,
                                                             base_val=acc["base_val"])
    with stages("prune"):  # groups -> importance -> the amount that reaches the target
        pruned = reach_target(model, data, cfg, device,
                              score=ranking_scorer(data, cfg.finetune.batch_size, cfg.seed, device,
                                                   cfg.prune.ranking_probe_steps, cfg.finetune.lr))
    model = pruned.model
    stages.start_logger()  # every input is validated by now: a refused run starts no logging run
    with stages("pruned_eval"):
        acc["pruned"] = _acc(model, data, "test", device)
    with stages("finetune"):
        history = fit(model, data, cfg.finetune, logger=stages.logger, desc="finetune") if cfg.finetune.epochs else []
    with stages("final_eval"):
        acc["final"], acc["final_val"] = _acc(model, data, "test", device), _acc(model, data, "val", device)
    with stages("pruned_latency"):
        lat["pruned"] = _latency(model, data, cfg, device)
    model = model.cpu().eval()
    report = build_report(cfg, model, data, device, pruned, acc, lat, macs_and_params(model, data.example_inputs()),
                          history, metanet, stages.timings)
    save(model, data, cfg, out, report, stages)
    return report


def prune_checkpoint(checkpoint, data="digits", speedup: float | None = 2.0, *, output_dir, params: float | None = None,
                     latency_speedup: float | None = None, metanet="auto", metanet_finetune_epochs: int | str = "auto",
                     importance: str = "l2", prune: dict | None = None, finetune_epochs: int = 5, lr: float = 0.02,
                     model_name: str | None = None, model_args: dict | None = None, onnx=None, stage: str = "trained",
                     export="none", latency: dict | None = None, overwrite: bool = False, device: str = "auto",
                     seed: int = 0, threads: int | None = 1, progress: bool = True) -> dict:
    """``prune.py`` with plain arguments: prune ``checkpoint`` (a metaprune checkpoint directory, or a state dict
    file with ``model_name``; or an ``onnx`` file) on ``data`` (a dataset name, a ``data`` config dict, or a DataBundle) to ``speedup``
    (MACs; or ``params`` / ``latency_speedup``), after the metanetwork (``"auto"``, ``"none"`` or a path), and
    finetune for ``finetune_epochs``. ``prune``: more ``prune.*`` options (global_pruning, round_to,
    ignored_layers, ...). Writes ``output_dir`` (``pruned/`` + ``report.json``) and returns the report."""
    bundle = data if isinstance(data, DataBundle) else None
    data_cfg = {"name": data.name} if bundle else {"name": data} if isinstance(data, str) else dict(data)
    cfg = {"model": {"checkpoint": None if checkpoint is None else str(checkpoint), "name": model_name,
                     "args": model_args, "onnx": None if onnx is None else str(onnx)},
           "data": data_cfg, "output_dir": str(output_dir), "stage": stage, "export": export,
           "target": {"speedup": speedup, "params": params, "latency_speedup": latency_speedup},
           "metanet": {"checkpoint": None if metanet is None else str(metanet),
                       "finetune_epochs": metanet_finetune_epochs},
           "prune": {"importance": importance, **(prune or {})},
           "finetune": {"epochs": finetune_epochs, "lr": lr, "select": "best_val"},
           "latency": dict(latency or {}), "seed": seed, "device": device, "threads": threads,
           "overwrite": overwrite}
    return run_prune(cfg, data=bundle, progress=progress)


class Stages:
    """Times each stage (``with stages("name"):``, recorded when it finishes) and holds the run's logger."""

    def __init__(self, logger):
        self.t_start, self.timings, self.logger, self.own_logger = time.perf_counter(), {}, logger, None

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 3)
        if isinstance(self.logger, Logger):  # not yet when it is still a factory
            self.logger.log({f"time/{name}": self.timings[name]})

    def start_logger(self) -> None:
        """Call a logger factory (once pruning has succeeded); its run is finished by :func:`run_prune`."""
        if callable(self.logger):
            with self("logger_init"):
                self.logger = self.own_logger = self.logger()


def apply_metanet_stage(model, data, cfg: PruneConfig, transform, device, stages: Stages, base_val: float):
    """``(model, what was applied or why not, its test accuracy)``: the metanetwork of ``cfg.metanet`` (or the
    caller's ``transform``) rewrites the weights, then ``metanet.finetune_epochs`` of recovery finetuning. With
    ``metanet.max_val_drop`` a rewrite whose val accuracy (batch norms re-estimated) falls more than that many points
    below the original's (``base_val``) is undone: the network's own weights are pruned, with no recovery."""
    if transform is None and cfg.metanet_checkpoint is None:
        return model, None, None
    original = copy.deepcopy(model) if cfg.metanet.max_val_drop is not None else None
    with stages("transform"):
        if transform is not None:
            model, label, skipped = transform(model.eval(), data), "transform given by the caller", None
        else:
            label = cfg.metanet_checkpoint
            model, skipped = rewrite_for_pruning(label, model.eval(), data.example_inputs().to(device),
                                                 seen_only=cfg.metanet.checkpoint == "auto")
        if not isinstance(model, nn.Module):
            raise TypeError(f"the transform returned {type(model).__name__}, not an nn.Module")
        model = model.to(device)
    if skipped:
        return model, f"{label} ({skipped})", None
    own = None if transform is not None else label
    batches = recalibration_batches(own, cfg.metanet.recalibrate_batches)
    if batches > 0:
        with stages("transform_recalibrate"):
            recalibrate_norms(model, data, batches, cfg.finetune.batch_size, cfg.seed, device)
    if original is not None:
        with stages("transform_guard"):
            val = _acc(model, data, "val", device)
        if val < base_val - cfg.metanet.max_val_drop / 100:
            why = (f"undone: val accuracy {val:.2%} after the rewrite, {base_val:.2%} before, more than "
                   f"metanet.max_val_drop={cfg.metanet.max_val_drop:g} points lost")
            print(f"note: metanetwork {label} {why}; pruning the network's own weights")
            return original, f"{label} ({why})", None
    epochs = recovery_epochs(own, cfg.metanet.finetune_epochs)
    if epochs > 0:
        with stages("transform_finetune"):
            fit(model, data, dataclasses.replace(cfg.finetune, epochs=epochs), desc="after metanet")
    return model, label, _acc(model, data, "test", device)


def save(model, data, cfg: PruneConfig, out: Path, report: dict, stages: Stages) -> None:
    """Write ``pruned/`` (+ the verified exports) and ``report.json`` atomically; hand the summary to the logger."""
    t_save = time.perf_counter()  # timed by hand: its time goes into the report written in the same directory
    check_output_dir(cfg)  # again: files may have appeared in output_dir while the run worked
    with atomic_dir(out) as tmp:
        extra = {"base_checkpoint": report["checkpoint"], **{k: report[k] for k in ("final_acc", "speedup", "data")}}
        save_model(model, tmp / "pruned", extra=extra)
        formats = list(cfg.export)
        if model.metaprune_spec["name"] == "onnx" and "onnx" not in formats:  # ONNX in, ONNX out
            formats.insert(0, "onnx")
        add_exports(report, export_verified(model, data.example_inputs(4), tmp / "pruned", formats))
        stages.timings["save"] = round(time.perf_counter() - t_save, 3)
        stages.timings["total"] = round(time.perf_counter() - stages.t_start, 3)
        atomic_write_json(tmp / "report.json", report)
        write_result_marker(tmp, "prune")  # what lets a later overwrite=true replace this directory, and only this
    if stages.logger is not None:
        stages.logger.summary({**{k: report[k] for k in ("base_acc", "pruned_acc", "final_acc", "speedup", "base_macs",
                                                         "pruned_macs", "base_params", "pruned_params")},
                               **{f"time/{k}": v for k, v in stages.timings.items()}})
    report["output_dir"] = str(out)


def _acc(model, data, split, device) -> float:
    return evaluate(model, data.loader(split, 512, shuffle=False), device)["acc"]


def _latency(model, data, cfg: PruneConfig, device) -> dict:
    lat = cfg.latency
    x = data.example_inputs(min(lat.batch_size, 64))  # real inputs: node ids stay ids
    out = {"cpu": latency(copy.deepcopy(model), x, batch_size=lat.batch_size, device="cpu", warmup=lat.warmup,
                          runs=lat.runs)["median_ms"]}
    if device.type == "cuda":
        out["cuda"] = latency(model, x, batch_size=lat.batch_size, device=device, warmup=lat.warmup,
                              runs=lat.runs)["median_ms"]
    return out
