"""MetaPruning vs DepGraph vs random on held-out zoo networks, side by side, at equal training budgets.

    python benchmarks/quality.py                          # digits zoo, CPU, ~15 min
    python benchmarks/quality.py data=cifar10 zoo=...     # the same comparison at paper scale

Methods (every one receives the same trained checkpoint and trains ``budget_epochs`` in total after that):
  random            random group importance, then finetune for the whole budget
  depgraph          torch-pruning group-L2 on the original weights, finetune for the whole budget
  depgraph_sl       DepGraph sparse learning (GroupNormPruner regulariser) for ``pre_epochs``, prune, finetune the rest
  metaprune_direct  metanetwork rewrite, prune immediately (no training at all before pruning), finetune the whole budget
  metaprune         metanetwork rewrite, finetune ``pre_epochs``, prune, finetune the rest
Accuracy is reported on the test split right after pruning ("no finetune") and after the budget ("finetuned");
nothing is selected on test. Writes ``quality-<data>-<date>.json`` + ``.png`` and prints a markdown table.
"""
from __future__ import annotations

import copy
import datetime as dt
import platform
import statistics
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaprune.cli import friendly_errors, to_dict  # noqa: E402

METHODS = ("random", "depgraph", "depgraph_sl", "metaprune_direct", "metaprune")


def _ft_cfg(c: dict, epochs: int, seed: int) -> dict:
    return {**c["finetune"], "epochs": epochs, "seed": seed, "device": c["device"], "progress": False}


def run_network(base, data, metanet, c: dict, seed: int) -> dict:
    """Every method at every speedup on one network: {method: {speedup: {...}}}."""
    from metaprune.metanet import apply_metanet
    from metaprune.prune import prune
    from metaprune.prune.sparse import sparse_learning_hook
    from metaprune.train import evaluate, fit

    x = data.example_inputs()
    test = data.loader("test", 512, shuffle=False)
    acc = lambda m: evaluate(m, test, c["device"])["acc"]
    budget, pre = int(c["budget_epochs"]), int(c["pre_epochs"])
    out = {"base_acc": acc(base)}
    starts = {}  # method -> (model before pruning, epochs already spent)
    for method in c["methods"]:
        m = copy.deepcopy(base)
        if method == "depgraph_sl":
            hook = sparse_learning_hook(m, x, **c["sparse_learning"])
            fit(m, data, _ft_cfg(c, pre, seed), after_backward=hook, desc="sl")
            starts[method] = (m, pre)
        elif method in ("metaprune", "metaprune_direct"):
            m = apply_metanet(metanet, m, x)
            out[f"{method}_rewritten_acc"] = acc(m)
            spent = 0
            if method == "metaprune" and pre:
                fit(m, data, _ft_cfg(c, pre, seed), desc="meta-ft")
                spent = pre
            starts[method] = (m, spent)
        elif method in ("random", "depgraph"):
            starts[method] = (m, 0)
        else:
            raise ValueError(f"methods: unknown method {method!r}; known: {', '.join(METHODS)}")
    for method, (start, spent) in starts.items():
        out[method] = {}
        for s in c["speedups"]:
            m = copy.deepcopy(start)
            crit = "random" if method == "random" else c["importance"]
            res = prune(m, x, target_speedup=float(s), importance=crit, seed=seed)
            no_ft = acc(m)
            fit(m, data, _ft_cfg(c, budget - spent, seed), desc="ft")
            out[method][str(s)] = {"no_finetune": no_ft, "finetuned": acc(m), "speedup": res.speedup,
                                   "params_ratio": res.param_ratio, "epochs_before_prune": spent,
                                   "epochs_after_prune": budget - spent}
    return out


def summarise(per_net: dict, methods, speedups) -> dict:
    table = {}
    for method in methods:
        for s in speedups:
            for phase in ("no_finetune", "finetuned"):
                vals = [r[method][str(s)][phase] for r in per_net.values() if method in r]
                if vals:
                    table.setdefault(method, {}).setdefault(str(s), {})[phase] = {
                        "mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                        "n": len(vals)}
    return table


def markdown(table: dict, speedups, base_mean: float) -> str:
    head = "| method | " + " | ".join(f"{s}× no-ft | {s}× ft" for s in speedups) + " |"
    sep = "|---|" + "---|---|" * len(speedups)
    rows = [head, sep]
    for method, by_s in table.items():
        cells = []
        for s in speedups:
            r = by_s.get(str(s), {})
            for ph in ("no_finetune", "finetuned"):
                cells.append(f"{100 * r[ph]['mean']:.1f} ± {100 * r[ph]['std']:.1f}" if ph in r else "–")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    return f"Base (unpruned) test accuracy: {100 * base_mean:.1f}%\n\n" + "\n".join(rows)


def plot(table: dict, speedups, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for ax, phase, name in zip(axes, ("no_finetune", "finetuned"), ("no finetuning", "after equal finetuning")):
        for method, by_s in table.items():
            xs = [float(s) for s in speedups if str(s) in by_s]
            mu = [100 * by_s[str(s)][phase]["mean"] for s in speedups if str(s) in by_s]
            sd = [100 * by_s[str(s)][phase]["std"] for s in speedups if str(s) in by_s]
            ax.errorbar(xs, mu, yerr=sd, marker="o", capsize=3, label=method)
        ax.set(xlabel="MACs speedup (×)", ylabel="test accuracy (%)", title=name)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(c: dict) -> dict:
    from metaprune.data import get_data
    from metaprune.metanet import load_metanet
    from metaprune.train import seed_everything, split_data_cfg
    from metaprune.zoo import build_zoo, load_zoo

    bad = [m for m in c["methods"] if m not in METHODS]
    if bad:
        raise ValueError(f"methods: unknown {bad}; known: {', '.join(METHODS)}")
    if not 0 <= int(c["pre_epochs"]) <= int(c["budget_epochs"]):
        raise ValueError(f"pre_epochs={c['pre_epochs']} must lie in [0, budget_epochs={c['budget_epochs']}]")
    data_kwargs, _ = split_data_cfg(c["data"])
    data = get_data(**data_kwargs)
    root = Path(c["zoo"].get("root", "checkpoints/zoo")) / c["zoo"]["name"]
    zoo = load_zoo(root) if (root / "index.json").exists() else build_zoo(c["zoo"], c["data"], c["optim"], root=root)
    names = zoo.names(c["split"])[: c["max_networks"] or None]
    if not names:
        raise ValueError(f"zoo {root} has no {c['split']!r} networks")
    metanet = load_metanet(c["metanet_checkpoint"]) if any(m.startswith("metaprune") for m in c["methods"]) else None
    t0 = time.perf_counter()
    per_net = {}
    for i, name in enumerate(names):
        for seed in c["seeds"]:
            seed_everything(seed)
            t = time.perf_counter()
            per_net[f"{name}/seed{seed}"] = {"family": zoo.members[name]["family"],
                                             **run_network(zoo.load(name), data, metanet, c, seed)}
            print(f"[{i + 1}/{len(names)}] {name} seed {seed}: {time.perf_counter() - t:.0f}s", flush=True)
    table = summarise(per_net, c["methods"], c["speedups"])
    base_mean = statistics.mean(r["base_acc"] for r in per_net.values())
    date = dt.date.today().isoformat()
    tag = c["tag"] or f"{data.name}-{date}"
    out_dir = Path(c["out_dir"])
    result = {"benchmark": "quality", "date": date, "seconds": time.perf_counter() - t0,
              "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                           "threads": torch.get_num_threads(), "device": c["device"]},
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "config": c, "networks": names, "summary": table, "per_network": per_net,
              "base_acc_mean": base_mean}
    from metaprune.io import atomic_write_json

    atomic_write_json(out_dir / f"quality-{tag}.json", result)
    plot(table, c["speedups"], out_dir / f"quality-{tag}.png",
         f"{data.name}: {len(names)} held-out networks × {len(c['seeds'])} seed(s), test accuracy")
    md = markdown(table, c["speedups"], base_mean)
    print(md)
    return result


@hydra.main(version_base="1.3", config_path="../configs", config_name="quality")
@friendly_errors
def main(cfg: DictConfig) -> None:
    run(to_dict(cfg))


if __name__ == "__main__":
    main()
