"""Data-free, finetune-free pruning on digits: OBS vs group L2 vs random at 1.5x, 2x, 3x fewer MACs.

Trains several digits networks (ResNet-20 and VGG-11 variants, several seeds), prunes copies of each with
every method and no data and no finetuning, and reports test-split accuracy (mean and spread over networks).
Method choices (OBS statistics mode, damping, global allocation) were made on the val split of one ResNet-20
(seed 0); nothing here looks at the test split except the final numbers.

    python benchmarks/datafree.py                      # full run, writes JSON + PNG to benchmarks/results/
    python benchmarks/datafree.py --nets resnet20:0 --speedups 2   # quick look
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch
import torch_pruning as tp

from metaprune.data import get_data
from metaprune.io import atomic_write_json
from metaprune.prune.obs import obs_prune, prune_to_speedup
from metaprune.train import evaluate, train_network

NETS = {"resnet20": ("resnet", {"depth": 20}), "resnet20w24": ("resnet", {"depth": 20, "width": 24}),
        "vgg11w16": ("vgg", {"depth": 11, "width": 16})}
DEFAULT_NETS = ["resnet20:0", "resnet20:1", "resnet20:2", "vgg11w16:0", "vgg11w16:1"]

STEPS = 30  # torch-pruning steps to reach 0.9 channel ratio (3% per step), the same for every method

METHODS = {
    # OBS: propagated BN-Gaussian statistics, saliency + compensation, one global threshold
    "obs": lambda m, x, s, seed: obs_prune(m, x, s, seed=seed, steps=STEPS, num_samples=512),
    # OBS with strictly independent BN outputs (diagonal covariance: compensation is the mean shift)
    "obs_independent": lambda m, x, s, seed: obs_prune(m, x, s, seed=seed, steps=STEPS, num_samples=512,
                                                       stats_mode="independent"),
    # DepGraph's group L2, uniform ratio per group (torch-pruning's default) and one global threshold
    "l2": lambda m, x, s, seed: prune_to_speedup(m, x, s, steps=STEPS),
    "l2_global": lambda m, x, s, seed: prune_to_speedup(m, x, s, steps=STEPS, global_pruning=True),
    "random": lambda m, x, s, seed: _random(m, x, s, seed),
}
DEFAULT_METHODS = ["obs", "l2", "l2_global", "random"]


def _random(model, x, speedup, seed):
    torch.manual_seed(seed)
    return prune_to_speedup(model, x, speedup, tp.importance.RandomImportance(), steps=STEPS)


def run(nets, speedups, methods, epochs, out_json, out_png) -> dict:
    torch.set_num_threads(1)  # the 2-core machine is shared with other jobs
    data = get_data("digits")
    x = data.example_inputs()
    test_loader = data.loader("test", 512, shuffle=False)
    records, t0 = [], time.perf_counter()
    for spec in nets:
        key, seed = spec.split(":")
        name, args = NETS[key]
        model, rec = train_network(name, args, optim={"epochs": epochs}, seed=int(seed), data=data, progress=False)
        model.eval()
        entry = {"net": key, "seed": int(seed), "dense_val_acc": rec["val_acc"], "dense_test_acc": rec["test_acc"],
                 "train_seconds": rec["train_seconds"], "results": {}}
        for method in methods:
            for s in speedups:
                m = copy.deepcopy(model)
                t = time.perf_counter()
                report = METHODS[method](m, x, s, int(seed))
                entry["results"][f"{method}@{s}"] = {
                    "test_acc": evaluate(m, test_loader, "cpu")["acc"], "speedup": report["speedup"],
                    "prune_seconds": time.perf_counter() - t}
        records.append(entry)
        print(f"{spec}: dense {rec['test_acc']:.3f}  " + "  ".join(
            f"{k} {v['test_acc']:.3f}" for k, v in entry["results"].items()), flush=True)
    summary = {}
    for method in methods:
        for s in speedups:
            accs = [r["results"][f"{method}@{s}"]["test_acc"] for r in records]
            summary[f"{method}@{s}"] = {"mean": statistics.fmean(accs), "std": statistics.pstdev(accs),
                                        "min": min(accs), "max": max(accs), "n": len(accs)}
    dense = [r["dense_test_acc"] for r in records]
    result = {
        "benchmark": "datafree-digits", "split": "test", "epochs": epochs, "speedups": speedups,
        "methods": methods, "nets": nets, "dense": {"mean": statistics.fmean(dense), "std": statistics.pstdev(dense)},
        "summary": summary, "records": records, "seconds": time.perf_counter() - t0,
        "machine": f"{platform.machine()} cpu, torch {torch.__version__}, {torch.get_num_threads()} threads",
    }
    atomic_write_json(out_json, result)
    plot(result, out_png)
    return result


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    sp = result["speedups"]
    for method in result["methods"]:
        mean = [result["summary"][f"{method}@{s}"]["mean"] for s in sp]
        std = [result["summary"][f"{method}@{s}"]["std"] for s in sp]
        ax.errorbar(sp, mean, yerr=std, marker="o", capsize=3, label=method)
    ax.axhline(result["dense"]["mean"], color="k", ls="--", lw=1, label="dense")
    ax.axhline(0.1, color="grey", ls=":", lw=1, label="chance")
    ax.set_xlabel("MACs speedup (no data, no finetuning)")
    ax.set_ylabel("test accuracy (mean ± std over networks)")
    ax.set_title(f"Data-free pruning on digits ({len(result['nets'])} networks)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", nargs="+", default=DEFAULT_NETS, help=f"net:seed, net in {sorted(NETS)}")
    p.add_argument("--speedups", nargs="+", type=float, default=[1.5, 2.0, 3.0])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--out", default="benchmarks/results/datafree-digits.json")
    p.add_argument("--plot", default="benchmarks/results/datafree-digits.png")
    a = p.parse_args(argv)
    for n in a.nets:
        if n.split(":")[0] not in NETS or ":" not in n:
            p.error(f"--nets entry {n!r} must be NAME:SEED with NAME in {sorted(NETS)}")
    res = run(a.nets, a.speedups, a.methods, a.epochs, a.out, a.plot)
    for k, v in res["summary"].items():
        print(f"{k:22s} {v['mean']:.3f} ± {v['std']:.3f}  (min {v['min']:.3f}, max {v['max']:.3f})")
    print(f"dense {res['dense']['mean']:.3f} ± {res['dense']['std']:.3f}; {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
