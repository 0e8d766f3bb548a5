"""Time to prune torchvision networks to 2x fewer MACs on CPU: our one-shot search vs torch-pruning's loop.

``python benchmarks/prune_speed.py [--threads 1] [--repeats 3] [--tp-models resnet50 densenet121]``

Ours: ``metaprune.prune.prune(model, x, target_speedup=2.0)`` (trace, DepGraph, importance, bisection on the
analytic MACs count, one pruning pass, one real MACs count to report the achieved value). Torch-pruning's
reference: the progressive loop from its ImageNet benchmark, ``BasePruner(pruning_ratio=1.0,
iterative_steps=400)`` stepping and recounting MACs until the speedup is reached. Both start from a fresh
randomly initialised model at 224x224, batch 1, group L2 importance, classifier protected. Wall times include
everything from the fresh model to the pruned one. The load average is recorded: on a shared machine it
explains most of the spread. Writes ``benchmarks/results/prune_speed-cpu.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch_pruning as tp
import torchvision

from metaprune.metrics import macs_and_params
from metaprune.prune import find_output_layers, prune

MODELS = ["resnet50", "densenet121", "mobilenet_v2", "vit_b_16"]


def fresh(name: str):
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def output_layer(model, x):
    return model.get_submodule(find_output_layers(model, x)[0])


def ours(name: str, x, target: float) -> dict:
    model = fresh(name)
    t0 = time.perf_counter()
    res = prune(model, x, target_speedup=target)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "speedup": res.speedup, "predicted_speedup": res.base_macs / res.predicted_macs,
            "base_macs": res.base_macs, "pruned_macs": res.pruned_macs, "ratio": res.ratio}


def torch_pruning_loop(name: str, x, target: float, steps: int, limit_s: float) -> dict:
    model = fresh(name)
    head = output_layer(model, x)  # found outside the timed region
    t0 = time.perf_counter()
    kw = {}
    if name.startswith("vit"):
        kw["num_heads"] = {m: m.num_heads for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)}
    pruner = tp.pruner.BasePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=1.0, iterative_steps=steps, ignored_layers=[head], **kw)
    base, _ = macs_and_params(model, x)
    speedup, n = 1.0, 0
    while speedup < target and n < steps and time.perf_counter() - t0 < limit_s:
        pruner.step()
        n += 1
        speedup = base / macs_and_params(model, x)[0]
    secs = time.perf_counter() - t0
    return {"seconds": secs, "speedup": speedup, "steps": n, "iterative_steps": steps,
            "finished": speedup >= target}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--tp-models", nargs="*", default=["resnet50"])
    ap.add_argument("--target", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tp-steps", type=int, default=400)
    ap.add_argument("--tp-limit-s", type=float, default=900.0)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "prune_speed-cpu.json"))
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    x = torch.randn(1, 3, 224, 224)
    result = {"target_speedup": args.target, "input": [1, 3, 224, 224], "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "torch_pruning": tp.__version__,
              "loadavg_start": os.getloadavg(), "ours": {}, "torch_pruning_loop": {}}
    for name in args.models:
        runs = [ours(name, x, args.target) for _ in range(args.repeats)]
        rec = dict(runs[-1])
        rec["seconds"] = statistics.median(r["seconds"] for r in runs)
        rec["all_seconds"] = [round(r["seconds"], 3) for r in runs]
        result["ours"][name] = rec
        print(f"ours  {name:<14} {rec['seconds']:7.2f}s  speedup {rec['speedup']:.4f} "
              f"(runs {rec['all_seconds']})", flush=True)
    for name in args.tp_models:
        rec = torch_pruning_loop(name, x, args.target, args.tp_steps, args.tp_limit_s)
        result["torch_pruning_loop"][name] = rec
        print(f"tp    {name:<14} {rec['seconds']:7.2f}s  speedup {rec['speedup']:.4f} steps {rec['steps']}"
              f"{'' if rec['finished'] else ' (stopped at the time limit)'}", flush=True)
    result["loadavg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
