"""Publish a built zoo's index: every member's split, accuracy, MACs, params and training time, per-family summary.

    python benchmarks/zoo_report.py checkpoints/zoo/fashion_mnist

Writes ``benchmarks/results/zoo-<name>.json`` and ``.png`` (test accuracy against MACs, one colour per family,
one marker per split) and prints a markdown table per family.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaprune.io import atomic_write_json  # noqa: E402
from metaprune.zoo import SPLITS, load_zoo  # noqa: E402


def summarise(members: dict) -> dict:
    """Per family: member count per split, mean ± std test accuracy, accuracy range, MACs range, CPU minutes."""
    out = {}
    for fam in sorted({m["family"] for m in members.values()}):
        ms = [m for m in members.values() if m["family"] == fam]
        acc = [m["test_acc"] for m in ms]
        out[fam] = {"members": len(ms), "splits": {s: sum(m["split"] == s for m in ms) for s in SPLITS},
                    "test_acc_mean": statistics.mean(acc), "test_acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "test_acc_min": min(acc), "test_acc_max": max(acc),
                    "macs_min": min(m["macs"] for m in ms), "macs_max": max(m["macs"] for m in ms),
                    "params_min": min(m["params"] for m in ms), "params_max": max(m["params"] for m in ms),
                    "train_minutes": sum(m.get("train_seconds", 0.0) for m in ms) / 60}
    return out


def markdown(families: dict) -> str:
    rows = ["| family | members (train/val/held-out) | test acc (mean ± std, min–max) | MACs | params | train CPU-min |",
            "|---|---|---|---|---|---|"]
    for fam, f in families.items():
        s = f["splits"]
        rows.append(f"| {fam} | {f['members']} ({s['train']}/{s['val']}/{s['heldout']}) | "
                    f"{100 * f['test_acc_mean']:.1f} ± {100 * f['test_acc_std']:.1f} "
                    f"({100 * f['test_acc_min']:.1f}–{100 * f['test_acc_max']:.1f}) | "
                    f"{f['macs_min'] / 1e6:.2f}–{f['macs_max'] / 1e6:.2f}M | "
                    f"{f['params_min'] / 1e3:.0f}–{f['params_max'] / 1e3:.0f}k | {f['train_minutes']:.0f} |")
    return "\n".join(rows)


def plot(members: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = sorted({m["family"] for m in members.values()})
    markers = {"train": "o", "val": "s", "heldout": "^"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, fam in enumerate(fams):
        for split, mk in markers.items():
            ms = [m for m in members.values() if m["family"] == fam and m["split"] == split]
            if ms:
                ax.scatter([m["macs"] / 1e6 for m in ms], [100 * m["test_acc"] for m in ms], marker=mk,
                           color=f"C{i}", label=f"{fam} ({split})", alpha=0.8)
    ax.set(xscale="log", xlabel="MACs (M, log scale)", ylabel="test accuracy (%)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", help="a built zoo's folder (holding index.json)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    zoo = load_zoo(a.zoo)
    name = zoo.index["config"].get("name", Path(a.zoo).name)
    families = summarise(zoo.members)
    result = {"benchmark": "zoo", "zoo": name, "data": zoo.index["data"], "config": zoo.index["config"],
              "split": zoo.split, "families": families, "members": zoo.members,
              "train_cpu_hours": sum(m.get("train_seconds", 0.0) for m in zoo.members.values()) / 3600,
              "hardware": {"machine": platform.machine(), "processor": platform.processor()}}
    out = Path(a.out_dir)
    atomic_write_json(out / f"zoo-{name}.json", result)
    plot(zoo.members, out / f"zoo-{name}.png", f"zoo {name}: {len(zoo)} networks")
    print(markdown(families))
    print(f"\n{len(zoo)} networks, {result['train_cpu_hours']:.2f} h of training (wall, 1 thread each)")
    return result


if __name__ == "__main__":
    main()
