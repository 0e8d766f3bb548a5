"""No accuracy cost hidden: the MACs route and the measured-latency route on the digits zoo, equal finetuning.

    python benchmarks/latency_zoo.py [--targets 1.5 2 3] [--batch 1024] [--runs 15] [--epochs 5] [--lr 0.02]

For each held-out zoo network and each target s, two routes prune the same trained network with the same
criterion (group L2) and rounding (``round_to`` measured for the device, as ``target.latency_speedup`` uses;
where a narrow network cannot reach s at that multiple, the smaller one the MACs route falls back to, as
``prune.round_to=auto`` does, is used by both routes and recorded per cell):
  macs     ``prune(target_speedup=s)``
  latency  ``prune_to_latency(target_latency_speedup=s)`` at ``--batch``; where the device cannot give s, the
           fastest candidate the search measured is taken and the cell is marked ``reached: false``
Both then get the identical finetuning (same epochs, optimizer, lr, schedule, data, seed; the epoch kept is
chosen on val), and report test accuracy, MACs ratio and a fresh paired latency ratio (base vs pruned timed
alternately, load average recorded). Writes ``benchmarks/results/latency_zoo-<data>.json`` + ``.png``.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from latency import LoggedTimer, _cpu_model, _load  # noqa: E402

from metaprune.data import get_data  # noqa: E402
from metaprune.hardware import default_round_to  # noqa: E402
from metaprune.io import atomic_write_json  # noqa: E402
from metaprune.metrics import device_name  # noqa: E402
from metaprune.prune import prune  # noqa: E402
from metaprune.prune.latency import prune_measured_round_to, prune_to_latency  # noqa: E402
from metaprune.train import TrainConfig, evaluate, fit, seed_everything, split_data_cfg  # noqa: E402
from metaprune.zoo import load_zoo  # noqa: E402

ROUTES = ("macs", "latency")
RESULTS = Path(__file__).parent / "results"


def prune_route(route: str, base, x, s: float, args, round_to) -> tuple[torch.nn.Module, dict]:
    """A pruned copy of ``base`` by ``route`` at target ``s``, and what the pruning reached."""
    m = copy.deepcopy(base)
    kw = dict(importance="l2", round_to=round_to, seed=args.seed)
    if route == "macs":  # the measured multiple, lowered where this network cannot reach s at it
        r = prune_measured_round_to(m, x, target_speedup=s, **kw)
        return m, {"macs_speedup": r.speedup, "params_ratio": r.param_ratio, "round_to": r.round_to}
    timer = LoggedTimer(x)
    try:
        r, search = prune_to_latency(m, x, s, batch_size=args.batch, runs=args.runs, timer=timer, **kw)
        reached = True
    except ValueError:  # the device cannot give s: keep the fastest candidate measured, and say so
        best = max(timer.calls, key=lambda c: c["latency_speedup"])
        m = copy.deepcopy(base)
        r, search = prune(m, x, target_speedup=best["macs_speedup"], **kw), {"latency_speedup": best["latency_speedup"]}
        reached = False
    return m, {"macs_speedup": r.speedup, "params_ratio": r.param_ratio, "round_to": round_to, "reached": reached,
               "search_latency_speedup": search["latency_speedup"], "search": timer.calls}


def run_network(base, data, x, args, ft: dict, round_to) -> dict:
    test = data.loader("test", 512, shuffle=False)
    out = {"base_acc": evaluate(base, test, "cpu")["acc"]}
    for s in args.targets:
        rounding = round_to
        for route in ROUTES:
            t0 = time.perf_counter()
            m, cell = prune_route(route, base, x, s, args, rounding)
            rounding = cell["round_to"]  # the latency route rounds as the MACs route did: one rounding for both
            cell["no_finetune_acc"] = evaluate(m, test, "cpu")["acc"]
            fit(m, data, TrainConfig.from_dict(ft), desc=f"{route} {s}x")
            cell["test_acc"] = evaluate(m, test, "cpu")["acc"]
            cell["val_acc"] = evaluate(m, data.loader("val", 512, shuffle=False), "cpu")["acc"]
            timer = LoggedTimer()  # a fresh measurement of the finetuned model, same for both routes
            timer(base, m, tuple(x.shape[1:]), args.batch, "cpu", torch.float32, 2 * args.runs)
            cell.update(timer.calls[0], finetune=ft, seconds=time.perf_counter() - t0)
            out.setdefault(route, {})[str(s)] = cell
    return out


def _stat(vals) -> dict:
    return {"mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def summarise(per_net: dict, targets) -> dict:
    """Mean ± std over networks per route and target, plus test accuracy per family."""
    table = {}
    for route in ROUTES:
        for s in map(str, targets):
            cells = [r[route][s] for r in per_net.values()]
            table.setdefault(route, {})[s] = {
                **{k: _stat([c[k] for c in cells]) for k in ("test_acc", "no_finetune_acc", "macs_speedup",
                                                              "latency_speedup")},
                "reached": sum(c.get("reached", True) for c in cells)}
    for fam in sorted({r["family"] for r in per_net.values()}):
        nets = [r for r in per_net.values() if r["family"] == fam]
        table.setdefault("by_family", {})[fam] = {
            route: {s: {k: _stat([r[route][s][k] for r in nets]) for k in ("test_acc", "latency_speedup")}
                    for s in map(str, targets)} for route in ROUTES}
        table["by_family"][fam]["base_acc"] = _stat([r["base_acc"] for r in nets])
    return table


def markdown(table: dict, targets) -> str:
    rows = ["| target | route | test acc (%) | MACs ratio | measured latency ratio | reached target |",
            "|---|---|---|---|---|---|"]
    for s in map(str, targets):
        for route in ROUTES:
            c = table[route][s]
            rows.append(f"| {s}× | {route} | {100 * c['test_acc']['mean']:.1f} ± {100 * c['test_acc']['std']:.1f} | "
                        f"{c['macs_speedup']['mean']:.2f} ± {c['macs_speedup']['std']:.2f} | "
                        f"{c['latency_speedup']['mean']:.2f} ± {c['latency_speedup']['std']:.2f} | "
                        + (f"{c['reached']}/{c['test_acc']['n']} |" if route == "latency" else "– |"))
    return "\n".join(rows)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets, fams = result["config"]["targets"], result["summary"]["by_family"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.3))
    for i, route in enumerate(ROUTES):
        for j, (fam, t) in enumerate(fams.items()):
            a.plot(targets, [100 * t[route][str(s)]["test_acc"]["mean"] for s in targets], "o--s-"[2 * i:2 * i + 2],
                   color=f"C{j}", label=f"{fam} ({t[route][str(targets[0])]['test_acc']['n']}), {route} target")
        cells = [r[route][str(s)] for r in result["per_network"].values() for s in targets]
        b.scatter([c["macs_speedup"] for c in cells], [c["latency_speedup"] for c in cells], marker="os"[i], s=18,
                  alpha=0.7, label=f"{route} target")
    a.set(xlabel="target (×)", ylabel="test accuracy after equal finetuning (%)",
          title=f"{len(result['networks'])} held-out digits networks, family means")
    lim = max(c["macs_speedup"] for r in result["per_network"].values() for rt in ROUTES for c in r[rt].values())
    b.plot([1, lim], [1, lim], ":", color="0.5", label="time = MACs")
    b.set(xlabel="MACs ratio", ylabel="measured latency ratio", xscale="log", yscale="log",
          title=f"{result['hardware']['device']}, batch {result['config']['latency']['batch_size']}")
    for ax in (a, b):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zoo", default="checkpoints/zoo/digits")
    p.add_argument("--split", default="heldout")
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--batch", type=int, default=1024,
                   help="latency batch: large, so these tiny nets are not overhead-bound")
    p.add_argument("--runs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=5, help="finetuning epochs, the same for both routes")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-networks", type=int, default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--replot", action="store_true", help="only redo the summary and plot of the existing JSON")
    args = p.parse_args(argv)
    if args.replot:
        path = Path(args.out) / "latency_zoo-digits.json"
        result = json.loads(path.read_text())
        result["summary"] = summarise(result["per_network"], result["config"]["targets"])
        atomic_write_json(path, result)
        plot(result, path.with_suffix(".png"))
        print(markdown(result["summary"], result["config"]["targets"]))
        return result
    if any(not s > 1 for s in args.targets):
        p.error(f"--targets: every target must be > 1, got {args.targets}")
    zoo = load_zoo(args.zoo)
    data = get_data(**split_data_cfg(zoo.index["data"])[0])  # the data the zoo was trained on, same split
    names = zoo.names(args.split)[: args.max_networks]
    ft = {"epochs": args.epochs, "optimizer": "sgd", "lr": args.lr, "momentum": 0.9, "weight_decay": 5e-4,
          "schedule": "cosine", "batch_size": 128, "seed": args.seed, "device": "cpu", "select": "best_val",
          "progress": False}
    round_to = default_round_to("cpu")
    x = data.example_inputs()
    t_start = time.perf_counter()
    result = {"benchmark": "latency_zoo", "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(["python", "benchmarks/latency_zoo.py", *(sys.argv[1:] if argv is None else argv)]),
              "hardware": {"device": device_name("cpu"), "processor": _cpu_model(), "machine": platform.machine(),
                           "threads": torch.get_num_threads(), "gpu": None},
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "config": {"zoo": args.zoo, "split": args.split, "data": data.name, "targets": args.targets,
                         "importance": "l2", "round_to": round_to, "finetune": ft,
                         "latency": {"batch_size": args.batch, "runs": args.runs, "dtype": "float32", "device": "cpu"}},
              "loadavg_start": _load(), "networks": names, "per_network": {}}
    out = Path(args.out)
    for i, name in enumerate(names):
        seed_everything(args.seed)
        t0 = time.perf_counter()
        result["per_network"][name] = {"family": zoo.members[name]["family"],
                                       **run_network(zoo.load(name).eval(), data, x, args, ft, round_to)}
        r = result["per_network"][name]
        print(f"[{i + 1}/{len(names)}] {name} ({time.perf_counter() - t0:.0f}s): " + "; ".join(
            f"{s}x {route} acc {r[route][str(s)]['test_acc']:.3f} MACs {r[route][str(s)]['macs_speedup']:.2f}x "
            f"time {r[route][str(s)]['latency_speedup']:.2f}x" for s in args.targets for route in ROUTES), flush=True)
    result.update(summary=summarise(result["per_network"], args.targets), loadavg_end=_load(),
                  seconds=time.perf_counter() - t_start)
    atomic_write_json(out / f"latency_zoo-{data.name}.json", result)
    plot(result, out / f"latency_zoo-{data.name}.png")
    print(markdown(result["summary"], args.targets))
    return result


if __name__ == "__main__":
    main()
