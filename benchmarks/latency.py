"""MACs target vs measured-latency target: does the pruned network really run faster?

    python benchmarks/latency.py [--device cpu] [--batch 8] [--targets 1.5 2 3] [--models resnet50 mobilenet_v2]

For each torchvision model (random init, 224x224) and each target, two routes prune the same network:
  macs     ``prune(target_speedup=s)``                     — channel counts wherever the criterion puts them
  latency  ``prune_to_latency(target_latency_speedup=s)``  — round_to measured for the device, candidates timed
Both pruned models are then timed against the unpruned one *alternately* (paired runs, so background load
hits both alike) and the measured latency ratio is recorded beside the MACs ratio. Writes
``benchmarks/results/latency-<device>.json`` and a PNG of MACs ratio vs latency ratio.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaprune.hardware import default_round_to  # noqa: E402
from metaprune.io import atomic_write_json  # noqa: E402
from metaprune.metrics import device_name  # noqa: E402
from metaprune.prune import prune  # noqa: E402
from metaprune.prune.latency import paired_speedup, prune_to_latency  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "densenet121", "vit_b_16"])
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    round_to = default_round_to(args.device, dtype)
    x = torch.randn(1, 3, args.size, args.size)
    rows = []
    for name in args.models:
        base = getattr(torchvision.models, name)(weights=None).eval()
        for s in args.targets:
            row = {"model": name, "target": s}
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            r = prune(m, x, target_speedup=s)
            _, _, lat = paired_speedup(base, m, x.shape[1:], args.batch, args.device, dtype, args.runs)
            row["macs_route"] = {"macs_speedup": r.speedup, "latency_speedup": lat, "seconds": time.perf_counter() - t0}
            m = copy.deepcopy(base)
            t0 = time.perf_counter()
            try:
                r, search = prune_to_latency(m, x, s, batch_size=args.batch, device=args.device, dtype=dtype,
                                             runs=args.runs, round_to=round_to)
            except ValueError as e:  # recorded, not hidden: the device cannot give this much
                row["latency_route"] = {"unreachable": str(e), "seconds": time.perf_counter() - t0}
                rows.append(row)
                print(f"{name} target {s}x: latency route unreachable: {e}", flush=True)
                continue
            _, _, lat = paired_speedup(base, m, x.shape[1:], args.batch, args.device, dtype, args.runs)
            row["latency_route"] = {"macs_speedup": r.speedup, "latency_speedup": lat, "round_to": round_to,
                                    "search_latency_speedup": search["latency_speedup"],
                                    "candidates": len(search["trials"]), "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"{name} target {s}x: MACs route {row['macs_route']['macs_speedup']:.2f}x MACs -> "
                  f"{row['macs_route']['latency_speedup']:.2f}x time | latency route "
                  f"{row['latency_route']['macs_speedup']:.2f}x MACs -> {row['latency_route']['latency_speedup']:.2f}x time",
                  flush=True)
    tag = "cpu" if args.device == "cpu" else "gpu"
    out = {"device": device_name(args.device), "dtype": args.dtype, "batch_size": args.batch,
           "input": [3, args.size, args.size], "threads": torch.get_num_threads(), "torch": torch.__version__,
           "machine": platform.machine(), "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d"),
           "round_to": round_to, "rows": rows}
    atomic_write_json(RESULTS / f"latency-{tag}.json", out)
    plot(rows, RESULTS / f"latency-{tag}.png", f"{out['device']}, {args.dtype}, batch {args.batch}")


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for i, name in enumerate(sorted({r["model"] for r in rows})):
        sel = [r for r in rows if r["model"] == name and "macs_speedup" in r["latency_route"]]
        ax.plot([r["macs_route"]["macs_speedup"] for r in sel], [r["macs_route"]["latency_speedup"] for r in sel],
                "o--", color=f"C{i}", label=f"{name} (MACs target)")
        ax.plot([r["latency_route"]["macs_speedup"] for r in sel], [r["latency_route"]["latency_speedup"] for r in sel],
                "s-", color=f"C{i}", label=f"{name} (latency target)")
    lim = max(max(r["macs_route"]["macs_speedup"], r["latency_route"].get("macs_speedup", 1)) for r in rows) + 0.5
    ax.plot([1, lim], [1, lim], ":", color="0.5", label="time = MACs")
    ax.set(xlabel="MACs ratio (base / pruned)", ylabel="measured latency ratio", title=title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
