"""The pipeline's report: ``report.json`` (:func:`build_report`, :func:`add_exports`) and the one-screen summary
``prune.py`` prints (:func:`format_report`)."""
from __future__ import annotations

from ..logging import active_run
from ..metrics import device_name
from .ranking import ATTENTION_RULE

EXPORT_REPORT = {"onnx": ("onnx", "max_abs_diff_onnxruntime"),  # export format -> report key, its diff's key
                 "torch": ("torch_export", "max_abs_diff_reloaded")}


def build_report(cfg, model, data, device, pruned, acc: dict, lat: dict, macs_params: tuple, history: list,
                 metanet, timings: dict) -> dict:
    """``report.json`` of a run: ``cfg`` (PruneConfig), ``pruned`` (the route's Pruned), ``acc``: base / base_val /
    transformed / pruned / final / final_val accuracy, ``lat``: base / pruned latency ``{"cpu"[, "cuda"]}``,
    ``macs_params``: the pruned model's, ``metanet``: what was applied (or why not)."""
    result = pruned.result
    pruned_macs, pruned_params = macs_params
    src = cfg.raw["model"]
    return {
        "model": model.metaprune_spec["name"], "data": data.name, "stage": cfg.stage,
        "checkpoint": str(src.get("onnx") or src.get("checkpoint")),
        "metanet": None if metanet is None else str(metanet),
        "base_acc": acc["base"], "base_val_acc": acc["base_val"], "transformed_acc": acc["transformed"],
        "pruned_acc": acc["pruned"], "final_acc": acc["final"], "final_val_acc": acc["final_val"],
        "base_macs": result.base_macs, "pruned_macs": pruned_macs, "speedup": result.base_macs / pruned_macs,
        "base_params": result.base_params, "pruned_params": pruned_params,
        "param_ratio": result.base_params / pruned_params, "target": result.target,
        "base_latency_ms": lat["base"]["cpu"], "pruned_latency_ms": lat["pruned"]["cpu"],
        "base_latency_cuda_ms": lat["base"].get("cuda"), "pruned_latency_cuda_ms": lat["pruned"].get("cuda"),
        "latency_batch_size": (cfg.raw.get("latency") or {}).get("batch_size", 1),
        "device": device_name(device), "latency_device": device_name("cpu"),
        "latency_speedup": lat["base"]["cpu"] / lat["pruned"]["cpu"],
        "latency_search": pruned.latency_search, "ranking_on_val": pruned.ranking,
        "pruning": {k: v for k, v in result.to_dict().items() if k not in ("removed",)},
        "finetune_history": history, "config": cfg.raw, "timings_s": timings,
        "wandb": active_run(),  # the run logging this one (id, name, group, folder), or None
    }


def add_exports(report: dict, exported: dict) -> None:
    """Record ``export_verified``'s files and reload differences under their report keys."""
    for fmt, e in exported.items():
        key, diff_key = EXPORT_REPORT[fmt]
        report[key] = {"path": f"pruned/{e['file']}", diff_key: e["max_abs_diff"], "tolerance": e["tolerance"]}


def _fmt_n(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def _asked(r: dict):
    """The ranking the run's config asked for (``prune.global_pruning``), when it says."""
    return ((r.get("config") or {}).get("prune") or {}).get("global_pruning")


def format_report(r: dict) -> str:
    """The one-screen summary printed at the end of ``prune.py``."""
    tgt = ", ".join(f"{k} {v:g}x" for k, v in r["target"].items())
    p = r["pruning"]
    rows = [
        f"metaprune prune: {r['model']} ({r['checkpoint']}) on {r['data']}; target {tgt}",
        f"  criterion {p['importance']}, {'global' if p['global_pruning'] else 'per-layer'} ranking"
        f"{' (by architecture: prune.global_pruning=attention)' if _asked(r) == ATTENTION_RULE else ''}, "
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
    if r.get("ranking_on_val"):
        v = r["ranking_on_val"]
        if "val_acc" in v:
            rows.append("  ranking chosen on val (batch norms re-estimated): "
                        + ", ".join(f"{k.replace('_', '-')} {a:.2%}" for k, a in v["val_acc"].items())
                        + (f" (global kept only with a lead of at least {v['margin']:.1%})" if v.get("margin") else ""))
        else:  # val_loss_after_<n>_steps: the probe's val loss, lower wins
            key = next(k for k in v if k.startswith("val_loss_after_"))
            rows.append(f"  ranking chosen on val ({key.replace('_', ' ')}): "
                        + ", ".join(f"{k.replace('_', '-')} {a:.3f}" for k, a in v[key].items()))
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
