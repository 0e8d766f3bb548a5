"""Does the metanetwork's held-out result hold across meta-training seeds? One table from several
``benchmarks/quality.py`` results, each made with the metanetwork of one meta-training seed (same zoo, same
held-out networks, same pruning seeds, same baselines from the shared cells).

    python benchmarks/metanet_seeds.py quality-s0.json quality-s1.json quality-s2.json \
        --runs RUN_s0 RUN_s1 RUN_s2 --out benchmarks/results/metanet_seeds-fashion_mnist.json

Per seed and speedup: the paired difference ``metaprune - depgraph`` (and every other ``paired`` entry the
results share) after the final finetune and right after pruning, its 95% interval and wins; across seeds: the mean
and standard deviation of the per-seed means, and whether every seed gives the same sign. ``--runs``: the
metanetwork directories ``train_meta.py`` wrote, one per result; their meta-val selection (best step and the whole
val curve) is copied into the summary.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def summarise(results: list[dict], names: list[str]) -> dict:
    pairs = sorted(set.intersection(*(set(r["paired"]) for r in results)))
    out = {"seeds": names, "checkpoints": [r["config"].get("metanet_checkpoint") for r in results], "pairs": {}}
    for pair in pairs:
        rows = {}
        for speed in sorted(results[0]["paired"][pair], key=float):
            for when in ("finetuned", "no_finetune"):
                per = [r["paired"][pair][speed][when] for r in results]
                means = [p["mean"] for p in per]
                rows.setdefault(speed, {})[when] = {
                    "per_seed": per, "mean_of_means": statistics.fmean(means),
                    "std_of_means": statistics.stdev(means) if len(means) > 1 else 0.0,
                    "same_sign": len({m > 0 for m in means}) == 1,
                    "separated_below_zero": sum(p["ci95"][1] < 0 for p in per),
                    "separated_above_zero": sum(p["ci95"][0] > 0 for p in per)}
        out["pairs"][pair] = rows
    return out


def markdown(summary: dict) -> str:
    lines = ["| pair | speedup | when | per seed: mean [95% CI] (wins/n) | mean ± sd over seeds | same sign |",
             "|---|---|---|---|---|---|"]
    for pair, rows in summary["pairs"].items():
        for speed, whens in rows.items():
            for when, s in whens.items():
                cells = "; ".join(f"{100 * p['mean']:+.1f} [{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}] "
                                  f"({p['wins']}/{p['n']})" for p in s["per_seed"])
                lines.append(f"| {pair} | {speed}× | {when} | {cells} | {100 * s['mean_of_means']:+.1f} ± "
                             f"{100 * s['std_of_means']:.1f} | {'yes' if s['same_sign'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", help="quality.py JSON results, one per meta-training seed")
    ap.add_argument("--names", nargs="*", help="a name per result (default: the file names)")
    ap.add_argument("--runs", nargs="*", default=[], help="the metanetwork directories, one per result")
    ap.add_argument("--out", help="write the summary here (JSON)")
    args = ap.parse_args(argv)
    results = [json.loads(Path(p).read_text()) for p in args.results]
    names = args.names or [Path(p).stem for p in args.results]
    if len(names) != len(results):
        raise SystemExit(f"error: --names gives {len(names)} names for {len(results)} results")
    summary = summarise(results, names)
    if args.runs:
        if len(args.runs) != len(results):
            raise SystemExit(f"error: --runs gives {len(args.runs)} directories for {len(results)} results")
        configs = [json.loads((Path(r) / "config.json").read_text()) for r in args.runs]
        summary["meta_val"] = [{"run": str(r), "seed": c.get("seed"), "best": c.get("best"), "curve": c.get("history")}
                               for r, c in zip(args.runs, configs)]
    if args.out:
        from metaprune.io import atomic_write_json

        atomic_write_json(Path(args.out), summary)
    print(markdown(summary))


if __name__ == "__main__":
    main()
