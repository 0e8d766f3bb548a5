"""Which channel multiples does this device's conv kernel like? (feeds the default ``round_to``)

    python benchmarks/channel_multiples.py [--device cuda --dtype bfloat16]

Times a c->c 3x3 convolution for every width in a range, in shuffled passes, and writes
``benchmarks/results/channel_multiples-<device>.json`` and a PNG of throughput vs width.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaprune.hardware import best_multiple, channel_throughput  # noqa: E402
from metaprune.io import atomic_write_json  # noqa: E402
from metaprune.metrics import device_name  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--lo", type=int, default=88)
    p.add_argument("--hi", type=int, default=136)
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    thr = channel_throughput(args.device, dtype, range(args.lo, args.hi + 1), passes=args.passes)
    m = best_multiple(thr)
    tag = "cpu" if args.device == "cpu" else "gpu"
    out = {"device": device_name(args.device), "dtype": args.dtype, "machine": platform.machine(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
           "round_to": m, "gmacs_per_s": {str(c): v / 1e9 for c, v in thr.items()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_json(RESULTS / f"channel_multiples-{tag}.json", out)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    cs = sorted(thr)
    ax.plot(cs, [thr[c] / 1e9 for c in cs], "o-", ms=3, color="0.6", label="all widths")
    for mult, col in ((8, "C0"), (16, "C1"), (32, "C3")):
        sel = [c for c in cs if c % mult == 0]
        ax.scatter(sel, [thr[c] / 1e9 for c in sel], color=col, zorder=3, label=f"multiples of {mult}")
    ax.set(xlabel="channels (c -> c, 3x3 conv)", ylabel="GMAC/s",
           title=f"{out['device']} {args.dtype}: chosen round_to = {m}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / f"channel_multiples-{tag}.png", dpi=110)
    print(f"round_to={m} on {out['device']} {args.dtype}")


if __name__ == "__main__":
    main()
