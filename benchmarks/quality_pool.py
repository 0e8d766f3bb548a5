"""Pool quality.py results on disjoint sets of networks into one, as if one run had held them all.

    python benchmarks/quality_pool.py benchmarks/results/quality-fashion_mnist-fresh_seeds_margin.json \
        benchmarks/results/quality-fashion_mnist-fresh2_margin.json --tag fashion_mnist-fresh_pooled_margin

Two fresh sets of 10 networks each give intervals over 10; pooled, the paired differences, wins and per-family
means are over all 20 (recomputed by quality.py's own functions, so the pooled file reads like any result). Only
results of one protocol pool: every setting but the zoo and where the cells and files went must be equal, and no
network (at one pruning seed) may appear twice; otherwise nothing is written and one error names the setting or the
network.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from quality import by_family, comparisons, markdown, plot, summarise  # noqa: E402

from metaprune.io import atomic_write_json  # noqa: E402

NEEDED = ("config", "networks", "per_network", "method_seconds")  # what a quality.py result holds that pool reads
# settings that say where a run looked or wrote, or which networks it ran, not how it pruned them
FREE = ("zoo", "tag", "cells_dir", "cells_from", "out_dir", "shard", "num_shards", "report_only", "logger")


def pool(results: list[dict], names: list[str]) -> dict:
    """One result over the networks of all ``results`` (quality.py JSONs, read), whose files are ``names``."""
    if len(results) < 2:
        raise ValueError("give at least two quality.py results to pool")
    first = results[0]["config"]
    for res, name in zip(results[1:], names[1:]):
        for key in sorted((set(first) | set(res["config"])) - set(FREE)):
            if first.get(key) != res["config"].get(key):
                raise ValueError(f"{name}: setting {key!r} differs from {names[0]}'s ({res['config'].get(key)!r} "
                                 f"against {first.get(key)!r}); only results of one protocol pool")
    per_net, source = {}, {}
    for res, name in zip(results, names):
        for key, rec in res["per_network"].items():
            if key in per_net:
                raise ValueError(f"{name}: network {key} is already in {source[key]}; pooled sets must be disjoint")
            per_net[key], source[key] = rec, name
    methods, speedups = first["methods"], first["speedups"]
    return {"benchmark": "quality", "pooled_from": names, "date": dt.date.today().isoformat(),
            "config": {**first, "zoo": [r["config"]["zoo"].get("name") for r in results]},
            "networks": [n for r in results for n in r["networks"]], "summary": summarise(per_net, methods, speedups),
            "paired": comparisons(per_net, methods, speedups), "families": by_family(per_net, methods, speedups),
            "method_seconds": {m: sum(r["method_seconds"][m] for r in results) for m in methods},
            "per_network": per_net, "base_acc_mean": statistics.mean(r["base_acc"] for r in per_net.values())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+", help="quality-<tag>.json files on disjoint networks")
    ap.add_argument("--tag", required=True, help="the pooled result is written as quality-<tag>.json (+ .png)")
    ap.add_argument("--out-dir", default="benchmarks/results")
    a = ap.parse_args(argv)
    try:
        results = []
        for p in a.results:
            try:
                res = json.loads(Path(p).read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"{p}: not a readable quality.py result ({e})") from None
            if not isinstance(res, dict) or res.get("benchmark") != "quality" or not all(k in res for k in NEEDED):
                raise ValueError(f"{p}: not a quality.py result (it needs {', '.join(NEEDED)})")
            results.append(res)
        pooled = pool(results, a.results)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out_dir) / f"quality-{a.tag}.json"
    atomic_write_json(out, pooled)
    speedups = pooled["config"]["speedups"]
    plot(pooled["summary"], speedups, out.with_suffix(".png"),
         f"pooled: {len(pooled['networks'])} networks × {len(pooled['config']['seeds'])} seed(s), test accuracy",
         pooled["base_acc_mean"])
    print(markdown(pooled["summary"], speedups, pooled["base_acc_mean"], pooled["paired"]))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
