"""Publish a built zoo's index: every member's split, accuracy, MACs, params and training time, per-family summary.

    python benchmarks/zoo_report.py checkpoints/zoo/fashion_mnist
    python benchmarks/zoo_report.py checkpoints/zoo/fashion_mnist --config configs/zoo/fashion_mnist.yaml  # unfinished

A zoo still being built has no ``index.json``: with ``--config`` the report plans the members and the split from
the zoo config and covers the members finished so far (``complete: false`` and the missing ones listed).
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

from metaprune.io import atomic_write_json, read_spec  # noqa: E402
from metaprune.zoo import SPLITS, load_zoo, plan_members, split_members  # noqa: E402
from metaprune.zoo.core import INDEX, index_entry  # noqa: E402


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
    rows = ["| family | members (train/val/held-out) | test acc (mean ± std, min–max) | MACs | params | train min (wall) |",
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


def unfinished(root: Path, config_file: str) -> dict:
    """An index-shaped dict of the members finished so far, the split planned from the zoo config."""
    import yaml

    cfg = yaml.safe_load(Path(config_file).read_text())
    planned = plan_members(cfg, {})
    split = split_members(planned, cfg.get("split") or {})
    members = {}
    for m in planned:
        if (root / m["name"] / "model.safetensors").is_file():
            members[m["name"]] = index_entry(m, split, read_spec(root / m["name"]).get("extra", {}))
    return {"config": cfg, "data": cfg.get("data"), "split": split, "members": members,
            "missing": sorted(m["name"] for m in planned if m["name"] not in members)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("zoo", help="a zoo's folder (holding index.json once complete)")
    ap.add_argument("--config", help="the zoo config, to report an unfinished zoo (no index.json yet)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args(argv)
    root = Path(a.zoo)
    if (root / INDEX).is_file() or not a.config:
        index = {**load_zoo(root).index, "missing": []}
    else:
        index = unfinished(root, a.config)
    members = index["members"]
    if not members:
        raise SystemExit(f"error: {root} holds no finished zoo member yet")
    name = index["config"].get("name", root.name)
    families = summarise(members)
    result = {"benchmark": "zoo", "zoo": name, "complete": not index["missing"], "missing": index["missing"],
              "data": index["data"], "config": index["config"], "split": index["split"], "families": families,
              "members": members, "train_hours": sum(m.get("train_seconds", 0.0) for m in members.values()) / 3600,
              "hardware": {"machine": platform.machine(), "processor": platform.processor()}}
    out = Path(a.out_dir)
    atomic_write_json(out / f"zoo-{name}.json", result)
    done = f"{len(members)} networks" + (f" of {len(members) + len(index['missing'])}" if index["missing"] else "")
    plot(members, out / f"zoo-{name}.png", f"zoo {name}: {done}")
    print(markdown(families))
    print(f"\n{done}, {result['train_hours']:.2f} h of training (wall time, 1 thread each)")
    return result


if __name__ == "__main__":
    main()
