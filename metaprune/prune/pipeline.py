"""The ``prune.py`` run with plain arguments: load -> (transform -> short finetune) -> prune -> finetune -> save.

``run_prune(cfg)`` takes the composed config as a dict (see ``configs/prune.yaml``); ``transform`` is the hook
where the metanetwork plugs in::

    transform(model: nn.Module, data: DataBundle) -> nn.Module

It receives the loaded, trained network (on the run's device, eval mode) and returns the network to prune
(the same object modified in place, or a new one of the same architecture carrying ``metaprune_spec``).
Every stage is timed; accuracy in the report is on the TEST split, selection (``finetune.select``) uses val.
Nothing is written until the run succeeds: the result directory appears atomically.
"""
from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from ..cli import UsageError
from ..data import DataBundle, get_data
from ..export import export_verified, parse_formats
from ..io import CheckpointError, atomic_dir, atomic_write_json, load_into, load_model, load_state_dict_file, save_model
from ..logging import Logger
from ..metrics import device_name, latency, macs_and_params
from ..models import build_for_data
from ..train import TrainConfig, evaluate, fit, pick_device, seed_everything, split_data_cfg
from .pruner import PruneResult, prune

Transform = Callable[[nn.Module, DataBundle], nn.Module]


def check_output_dir(path, overwrite: bool) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UsageError(f"output_dir {out} is a file; give a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"output_dir {out} already holds a run; pass overwrite=true to replace it")
    return out


STAGES = ("init", "trained", "trained_nofinetune")
EXPORT_REPORT = {"onnx": ("onnx", "max_abs_diff_onnxruntime"),  # export format -> report key, its diff's key
                 "torch": ("torch_export", "max_abs_diff_reloaded")}


def _prune_special(model, data, stage_name, speedup, kw, pcfg, device) -> PruneResult:
    """Pruning at initialisation (SNIP / magnitude) or data-free OBS with weight compensation; both step
    through torch-pruning's own pruner and report in the same PruneResult shape as :func:`prune`."""
    x = data.example_inputs().to(device)
    base_macs, base_params = macs_and_params(model, x)
    t0 = time.perf_counter()
    if stage_name == "init":
        from .at_init import prune_at_init

        crit = pcfg.get("init_criterion", "snip")
        rep = prune_at_init(model, x, float(speedup), criterion=crit,
                            batch=kw["calibration"] if crit == "snip" else None)
        name = f"init:{crit}"
    else:
        from .obs import obs_prune

        rep = obs_prune(model, x, float(speedup), global_pruning=bool(pcfg.get("global_pruning", True)))
        name = "obs"
    macs, params = macs_and_params(model, x)
    return PruneResult(base_macs=base_macs, pruned_macs=macs, base_params=base_params, pruned_params=params,
                       speedup=base_macs / macs, param_ratio=base_params / params, ratio=float("nan"),
                       target={"speedup": float(speedup)}, importance=name,
                       global_pruning=bool(pcfg.get("global_pruning", name == "obs")), round_to=None,
                       protected=[], seconds=time.perf_counter() - t0, channels={"steps": rep.get("steps")})


def load_network(model_cfg: dict, data: DataBundle) -> nn.Module:
    """A metaprune checkpoint directory, ``model.name`` + a plain state dict file (never unpickling code), or an
    ONNX file (``model.onnx``, converted with onnx2torch)."""
    if model_cfg.get("onnx"):
        from ..onnx import import_onnx

        return import_onnx(model_cfg["onnx"]).eval()
    ckpt = model_cfg.get("checkpoint")
    if not ckpt:
        raise UsageError("model.checkpoint is required: a metaprune checkpoint directory or a state dict file")
    path = Path(ckpt)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        return load_model(path)
    name = model_cfg.get("name")
    if not name:
        raise UsageError(f"{path} is a plain weights file: say which architecture it holds with model.name "
                         "(a registry name such as resnet, or tv:<torchvision name>)")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    state = load_state_dict_file(path)
    model = build_for_data(name, data.input_shape, data.num_classes, **dict(model_cfg.get("args") or {}))
    return load_into(model, state, path).eval()


def _check_fits_data(model: nn.Module, data: DataBundle, device) -> None:
    x = data.example_inputs(2).to(device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as e:
        raise UsageError(f"the checkpoint's network does not accept {data.name} inputs of shape "
                         f"{tuple(data.input_shape)}: {str(e).splitlines()[0]}") from None
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise UsageError(f"the checkpoint's network outputs {tuple(out.shape[1:])} per example; "
                         f"{data.name} has {data.num_classes} classes")


SHIPPED_METANETS = Path("checkpoints/metanet")


def metanet_checkpoint(metanet_cfg, data_name: str | None) -> Path | None:
    """Where the ``metanet`` config points: None for ``none``; ``checkpoint: auto`` is the metanetwork shipped
    for the run's dataset (``checkpoints/metanet/<data>``, e.g. the LSTM one for ``digits_seq``), else the
    digits one."""
    if metanet_cfg in (None, "none", False) or (isinstance(metanet_cfg, dict) and metanet_cfg.get("name") == "none"):
        return None
    if not isinstance(metanet_cfg, dict) or not metanet_cfg.get("checkpoint"):
        raise UsageError(f"metanet={metanet_cfg!r}: give metanet=none or metanet.checkpoint=PATH")
    if metanet_cfg["checkpoint"] == "auto":
        own = SHIPPED_METANETS / str(data_name)
        return own if (own / "metanet.safetensors").is_file() else SHIPPED_METANETS / "digits"
    return Path(metanet_cfg["checkpoint"])


def metanet_transform(metanet_cfg, data_name: str | None = None) -> Transform | None:
    """The transform for the ``metanet`` config: None for ``none``; else apply the metanetwork at
    :func:`metanet_checkpoint` (``metaprune.metanet.apply_metanet``)."""
    ckpt = metanet_checkpoint(metanet_cfg, data_name)
    if ckpt is None:
        return None
    if not ckpt.exists():
        raise CheckpointError(f"{ckpt}: metanetwork checkpoint not found")

    auto = metanet_cfg["checkpoint"] == "auto"

    def transform(model: nn.Module, data: DataBundle) -> nn.Module:
        from ..metanet import UnseenTypesError, apply_metanet

        device = next(model.parameters()).device
        try:
            return apply_metanet(ckpt, model, data.example_inputs().to(device), seen_only=auto)
        except UnseenTypesError as e:  # the default metanetwork does not know this family: leave the weights
            transform.skipped = f"skipped: {e}"
            print(f"note: metanetwork {ckpt} {transform.skipped}; pruning the network's own weights "
                  "(metanet.checkpoint=PATH applies one anyway)")
            return model

    transform.checkpoint, transform.skipped = ckpt, None
    return transform


def _acc(model, data, split, device) -> float:
    return evaluate(model, data.loader(split, 512, shuffle=False), device)["acc"]


def _latency(model, data, cfg, device) -> dict:
    x = data.example_inputs(min(int(cfg.get("batch_size", 1)), 64))  # real inputs: node ids stay ids
    lat = {"cpu": latency(copy.deepcopy(model), x, batch_size=cfg.get("batch_size", 1),
                          device="cpu", warmup=cfg.get("warmup", 5), runs=cfg.get("runs", 20))["median_ms"]}
    if device.type == "cuda":
        lat["cuda"] = latency(model, x, batch_size=cfg.get("batch_size", 1), device=device,
                              warmup=cfg.get("warmup", 5), runs=cfg.get("runs", 20))["median_ms"]
    return lat


def run_prune(cfg: dict, transform: Transform | None = None, logger=None, data: DataBundle | None = None,
              progress: bool = True) -> dict:
    """Run the whole pipeline from a plain config dict and return the report (also saved as report.json).

    ``transform``: overrides the one built from ``cfg["metanet"]``. ``data``: a prebuilt DataBundle (tests).
    ``logger``: a ``metaprune.logging.Logger``, or a zero-argument factory called once pruning has succeeded
    (so a refused input or target starts no wandb run) and finished at the end. ``cfg["threads"]``: CPU threads for
    this run (restored afterwards).
    """
    threads = torch.get_num_threads()
    state = {}
    try:
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg["threads"]))
        return _run_prune(cfg, transform, logger, data, progress, state)
    finally:
        torch.set_num_threads(threads)
        if state.get("own_logger") is not None:
            state["own_logger"].finish()


def _run_prune(cfg, transform, logger, data, progress, state) -> dict:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name):
        """Time the block as stage ``name`` (recorded only when it finishes)."""
        t0 = time.perf_counter()
        yield
        timings[name] = round(time.perf_counter() - t0, 3)
        if isinstance(logger, Logger):  # not yet when it is still a factory
            logger.log({f"time/{name}": timings[name]})

    out = check_output_dir(cfg["output_dir"], cfg.get("overwrite", False))
    target = dict(cfg.get("target") or {})
    speedup, params_t, lat_t = target.get("speedup"), target.get("params"), target.get("latency_speedup")
    if params_t is not None or lat_t is not None:
        speedup = None
    if lat_t is not None and params_t is not None:
        raise UsageError("set only one of target.params and target.latency_speedup")
    if speedup is None and params_t is None and lat_t is None:
        raise UsageError("set target.speedup (base MACs / pruned MACs), target.params (base / pruned params) or "
                         "target.latency_speedup (measured base / pruned latency)")
    for key, val in (("target.speedup", speedup), ("target.params", params_t), ("target.latency_speedup", lat_t)):
        if val is not None and not (isinstance(val, (int, float)) and val > 1):
            raise UsageError(f"{key}={val!r} must be a number > 1 (base / pruned); 1 means no pruning")
    try:
        export_formats = parse_formats(cfg.get("export"), cfg.get("export_onnx", False))
    except ValueError as e:
        raise UsageError(str(e)) from None
    pcfg = dict(cfg.get("prune") or {})
    stage_name = cfg.get("stage") or "trained"
    if stage_name not in STAGES:
        raise UsageError(f"stage={stage_name!r} is invalid: must be one of {', '.join(STAGES)}")
    ft_over = {"epochs": 0} if stage_name == "trained_nofinetune" else {}
    ft_cfg = TrainConfig.from_dict({**dict(cfg.get("finetune") or {}), **ft_over, **split_data_cfg(cfg["data"])[1],
                                    "seed": cfg.get("seed", 0), "device": cfg.get("device", "auto"),
                                    "progress": progress})
    metanet_cfg = cfg.get("metanet")
    if transform is None:
        transform = metanet_transform(metanet_cfg, cfg["data"].get("name"))
        metanet_path = None if transform is None else transform.checkpoint
    else:
        metanet_path = "transform given by the caller"
    metanet_epochs = int(metanet_cfg.get("finetune_epochs") or 0) if isinstance(metanet_cfg, dict) else 0
    device = pick_device(cfg.get("device", "auto"))
    seed_everything(cfg.get("seed", 0))

    with stage("load"):
        if data is None:
            data = get_data(**split_data_cfg(cfg["data"])[0])
        mcfg = dict(cfg["model"])
        if stage_name == "init" and not mcfg.get("checkpoint") and not mcfg.get("onnx"):
            if not mcfg.get("name"):
                raise UsageError("stage=init needs model.name (+ model.args) to build a fresh network, "
                                 "or model.checkpoint")
            seed_everything(cfg.get("seed", 0))
            model = build_for_data(mcfg["name"], data.input_shape, data.num_classes, **dict(mcfg.get("args") or {}))
        else:
            model = load_network(mcfg, data)
        model = model.to(device)
        _check_fits_data(model, data, device)

    with stage("base_eval"):
        base_acc = _acc(model, data, "test", device)
        base_val = _acc(model, data, "val", device)
    with stage("base_latency"):
        base_lat = _latency(model, data, cfg.get("latency") or {}, device)

    transformed_acc = None
    if transform is not None:
        with stage("transform"):
            model = transform(model.eval(), data)
            if not isinstance(model, nn.Module):
                raise TypeError(f"the transform returned {type(model).__name__}, not an nn.Module")
            model = model.to(device)
        skipped = getattr(transform, "skipped", None)
        if skipped:
            metanet_path = f"{metanet_path} ({skipped})"
        else:
            if metanet_epochs > 0:
                with stage("transform_finetune"):
                    fit(model, data, TrainConfig.from_dict({**vars(ft_cfg), "epochs": metanet_epochs}),
                        desc="after metanet")
            transformed_acc = _acc(model, data, "test", device)

    with stage("prune"):
        calib = next(iter(data.loader("train", ft_cfg.batch_size, seed=ft_cfg.seed)))
        lat_cfg = dict(cfg.get("latency") or {})
        lat_dtype = torch.bfloat16 if (device.type == "cuda" and lat_cfg.get("dtype") == "bfloat16") else torch.float32
        round_to = pcfg.get("round_to")
        if round_to == "auto" or (round_to is None and lat_t is not None):  # measured for this device and dtype
            from ..hardware import default_round_to

            round_to = default_round_to(device, lat_dtype)
        kw = dict(importance=pcfg.get("importance", "l2"), global_pruning=bool(pcfg.get("global_pruning", False)),
                  round_to=round_to, ignored_layers=tuple(pcfg.get("ignored_layers") or ()),
                  calibration=(calib[0].to(device), calib[1].to(device)), seed=cfg.get("seed", 0))
        latency_search = None
        crit = kw["importance"]
        if stage_name == "init" or crit == "obs":
            if lat_t is not None or params_t is not None:
                raise UsageError(f"{'stage=init' if stage_name == 'init' else 'prune.importance=obs'} takes "
                                 "target.speedup (MACs), not target.params / target.latency_speedup")
            result = _prune_special(model, data, stage_name, speedup, kw, pcfg, device)
        elif lat_t is not None:
            from .latency import prune_to_latency

            result, latency_search = prune_to_latency(
                model, data.example_inputs().to(device), float(lat_t), batch_size=int(lat_cfg.get("batch_size", 1)),
                device=device, dtype=lat_dtype, runs=int(lat_cfg.get("runs", 20)), **kw)
            model = model.to(device)
        else:
            result = prune(model, data.example_inputs().to(device), target_speedup=speedup, target_params=params_t,
                           **kw)
    if callable(logger):  # every input is validated by now: a refused run starts no logging run
        with stage("logger_init"):
            logger = state["own_logger"] = logger()
    with stage("pruned_eval"):
        pruned_acc = _acc(model, data, "test", device)

    with stage("finetune"):
        history = fit(model, data, ft_cfg, logger=logger, desc="finetune") if ft_cfg.epochs > 0 else []
    with stage("final_eval"):
        final_acc = _acc(model, data, "test", device)
        final_val = _acc(model, data, "val", device)
    with stage("pruned_latency"):
        pruned_lat = _latency(model, data, cfg.get("latency") or {}, device)
    model = model.cpu().eval()
    pruned_macs, pruned_params = macs_and_params(model, data.example_inputs())

    report = {
        "model": model.metaprune_spec["name"], "data": data.name, "stage": stage_name,
        "checkpoint": str(cfg["model"].get("onnx") or cfg["model"].get("checkpoint")),
        "metanet": None if metanet_path is None else str(metanet_path),
        "base_acc": base_acc, "base_val_acc": base_val, "transformed_acc": transformed_acc,
        "pruned_acc": pruned_acc, "final_acc": final_acc, "final_val_acc": final_val,
        "base_macs": result.base_macs, "pruned_macs": pruned_macs, "speedup": result.base_macs / pruned_macs,
        "base_params": result.base_params, "pruned_params": pruned_params,
        "param_ratio": result.base_params / pruned_params, "target": result.target,
        "base_latency_ms": base_lat["cpu"], "pruned_latency_ms": pruned_lat["cpu"],
        "base_latency_cuda_ms": base_lat.get("cuda"), "pruned_latency_cuda_ms": pruned_lat.get("cuda"),
        "latency_batch_size": (cfg.get("latency") or {}).get("batch_size", 1),
        "device": device_name(device), "latency_device": device_name("cpu"),
        "latency_speedup": base_lat["cpu"] / pruned_lat["cpu"],
        "latency_search": latency_search,
        "pruning": {k: v for k, v in result.to_dict().items() if k not in ("removed",)},
        "finetune_history": history, "config": cfg, "timings_s": timings,
    }
    t_save = time.perf_counter()  # timed by hand: its time goes into the report written in the same directory
    with atomic_dir(out) as tmp:
        save_model(model, tmp / "pruned", extra={"base_checkpoint": report["checkpoint"], "final_acc": final_acc,
                                                 "speedup": report["speedup"], "data": data.name})
        if model.metaprune_spec["name"] == "onnx" and "onnx" not in export_formats:  # ONNX in, ONNX out
            export_formats.insert(0, "onnx")
        exported = export_verified(model, data.example_inputs(4), tmp / "pruned", export_formats)
        for fmt, e in exported.items():
            key, diff_key = EXPORT_REPORT[fmt]
            report[key] = {"path": f"pruned/{e['file']}", diff_key: e["max_abs_diff"], "tolerance": e["tolerance"]}
        timings["save"] = round(time.perf_counter() - t_save, 3)
        timings["total"] = round(time.perf_counter() - t_start, 3)
        atomic_write_json(tmp / "report.json", report)
    if logger is not None:
        logger.summary({**{k: report[k] for k in ("base_acc", "pruned_acc", "final_acc", "speedup", "base_macs",
                                                  "pruned_macs", "base_params", "pruned_params")},
                        **{f"time/{k}": v for k, v in timings.items()}})
    report["output_dir"] = str(out)
    return report


def _fmt_n(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_report(r: dict) -> str:
    """The one-screen summary printed at the end of ``prune.py``."""
    tgt = ", ".join(f"{k} {v:g}x" for k, v in r["target"].items())
    p = r["pruning"]
    rows = [
        f"metaprune prune: {r['model']} ({r['checkpoint']}) on {r['data']}; target {tgt}",
        f"  criterion {p['importance']}, {'global' if p['global_pruning'] else 'per-layer'} ranking, "
        f"round_to {p['round_to'] or 1}, protected: {', '.join(p['protected']) or 'none'}",
        "",
        f"  {'':<22}{'base':>12}{'pruned':>12}{'finetuned':>12}",
        f"  {'test accuracy':<22}{r['base_acc']:>12.2%}{r['pruned_acc']:>12.2%}{r['final_acc']:>12.2%}",
        f"  {'MACs':<22}{_fmt_n(r['base_macs']):>12}{_fmt_n(r['pruned_macs']):>12}{'':>12}",
        f"  {'params':<22}{_fmt_n(r['base_params']):>12}{_fmt_n(r['pruned_params']):>12}{'':>12}",
        f"  {'latency cpu (ms)':<22}{r['base_latency_ms']:>12.3f}{r['pruned_latency_ms']:>12.3f}{'':>12}",
    ]
    if r.get("base_latency_cuda_ms") is not None:
        rows.append(f"  {'latency cuda (ms)':<22}{r['base_latency_cuda_ms']:>12.3f}"
                    f"{r['pruned_latency_cuda_ms']:>12.3f}")
    if r.get("transformed_acc") is not None:
        rows.append(f"  {'after metanet (test)':<22}{r['transformed_acc']:>12.2%}")
    if r.get("latency_search"):
        s = r["latency_search"]
        rows.append(f"  latency search on {s['device']} ({s['dtype']}, batch {s['batch_size']}): "
                    f"{s['latency_speedup']:.2f}x measured at {s['macs_speedup']:.2f}x fewer MACs, "
                    f"{len(s['trials'])} candidates")
    t = r["timings_s"]
    rows += [
        "",
        f"  speedup (MACs) {r['speedup']:.3f}x   params {r['param_ratio']:.2f}x smaller   "
        f"latency {r['base_latency_ms'] / max(r['pruned_latency_ms'], 1e-9):.2f}x (batch {r['latency_batch_size']}, "
        f"{r['latency_device']})",
        "  time: " + " | ".join(f"{k} {v:.1f}s" for k, v in t.items()),
        f"  saved: {r['output_dir']}/pruned  and  {r['output_dir']}/report.json",
    ]
    exports = [(r[k]["path"], r[k][d]) for k, d in EXPORT_REPORT.values() if r.get(k)]
    if exports:
        rows.append("  exported: " + ", ".join(f"{r['output_dir']}/{p} (reloaded: max abs diff {d:.1e})"
                                               for p, d in exports))
    return "\n".join(rows)
