"""How well does each cheap score pick the ranking (global or per layer) that finishes better after the finetune?

``prune.global_pruning=val`` (and quality.py's ``depgraph_val`` / ``metaprune_global=val``) prunes a network both
ways and keeps the candidate a score prefers. This script scores both candidates of every network of a zoo split at
each speedup with several scores and reads, from a quality.py result that ran ``depgraph`` (global) and
``depgraph_local`` (per layer) on the same networks, which one finished better after the protocol's finetune. It
reports, per score, how often it picked the better ranking and the accuracy points lost where it did not (regret).

Scores (all on val, each on a copy whose batch norms are re-estimated on 20 train batches):
``recal_acc`` / ``recal_loss`` right after pruning (the default choice uses ``recal_acc``), and ``probeK_acc`` /
``probeK_loss`` after K SGD steps (momentum 0.9, the finetune's lr) on train batches.

    python benchmarks/ranking_choice.py --split val \
        --quality benchmarks/results/quality-fashion_mnist-val_ranking.json \
        --out benchmarks/results/ranking_choice-fashion_mnist-val.json

Select a score on the meta-train and meta-val networks (``--split train``, ``--split val``); held-out networks are
for the final report only. ``--final finetuned_val`` reads which ranking finished better from the val accuracy after
the finetune (quality.py records it since 2026-12-01), so nothing is selected on test.

It also sweeps the margin of ``prune.ranking_margin`` for ``recal_acc`` (global ranking kept only when its val
accuracy leads per-layer ranking's by at least the margin): the regret of every interval of margins between the
observed leads, and the selected margin, the middle of the least-regret interval. ``--rows-from`` re-summarises
earlier results' scores together without scoring again. ``family_rules`` scores, at the selected margin, rules
that fix the ViTs' ranking to global (and the CNNs' to per layer) instead of letting the score choose:

    python benchmarks/ranking_choice.py --rows-from benchmarks/results/ranking_choice-fashion_mnist-val.json \
        --out benchmarks/results/ranking_choice-fashion_mnist-val.json
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from metaprune.data import get_data  # noqa: E402
from metaprune.io import atomic_write_json  # noqa: E402
from metaprune.prune import prune  # noqa: E402
from metaprune.prune.ranking import choose  # noqa: E402
from metaprune.train import evaluate, recalibrate_norms  # noqa: E402
from metaprune.train.loop import RECALIBRATE_BATCHES, probe_trained  # noqa: E402
from metaprune.zoo import load_zoo  # noqa: E402

RANKINGS = {"global": ("depgraph", True), "per_layer": ("depgraph_local", False)}


def score_candidates(base, data, speedup, probes, lr):
    """Both rankings' scores for one network at one speedup."""
    x, val = data.example_inputs(), data.loader("val", 512, shuffle=False)
    out = {}
    for name, (_, global_pruning) in RANKINGS.items():
        m = copy.deepcopy(base)
        prune(m, x, target_speedup=speedup, importance="l2_max", global_pruning=global_pruning, seed=0)
        recal = recalibrate_norms(copy.deepcopy(m), data, RECALIBRATE_BATCHES, 128, 0, "cpu")
        e = evaluate(recal, val, "cpu")
        s = {"recal_acc": e["acc"], "recal_loss": e["loss"]}
        for k in probes:  # the probe prune.ranking_probe_steps=k scores by its loss
            p = evaluate(probe_trained(m, data, k, lr, 128, 0, "cpu"), val, "cpu")
            s[f"probe{k}_acc"], s[f"probe{k}_loss"] = p["acc"], p["loss"]
        out[name] = s
    return out


def family(row: dict) -> str:
    """A row's zoo family: the network name up to its first ``-`` (``vit-d2-c48-h4-p4-s0`` -> ``vit``)."""
    return row["net"].split("-", 1)[0]


def regret(rows: list[dict], score: str, margin: float = 0.0, fixed: dict | None = None) -> dict:
    """How ``choose`` does on ``rows`` by ``score`` with ``margin``: choices right and the accuracy points lost after
    the finetune against the better ranking, mean and largest (losses: lower is better). ``fixed``
    ({family: ranking}) gives those families that ranking whatever the score says."""
    lost = []
    for r in rows:
        pick = (fixed and fixed.get(family(r))) or choose({n: r[n][score] for n in RANKINGS}, margin,
                                                       higher_is_better=not score.endswith("loss"))
        lost.append(100 * (max(r[n]["final"] for n in RANKINGS) - r[pick]["final"]))
    return {"right": sum(g == 0 for g in lost), "n": len(lost), "mean_regret": sum(lost) / max(len(lost), 1),
            "max_regret": max(lost, default=0.0)}


def summarise(rows: list[dict]) -> dict:
    """Per score: choices right, mean and largest regret (accuracy points after the finetune)."""
    scores = [k for k in rows[0]["global"] if k != "final"] if rows else []
    return {sc: regret(rows, sc) for sc in scores}


def margin_sweep(rows: list[dict], score: str = "recal_acc") -> dict:
    """Regret of ``metaprune.prune.ranking.choose`` with each margin >= 0 (``score`` higher is better). Global ranking
    is kept when its lead is >= the margin, so every margin in (lo, hi] between two observed leads makes the same
    choices: one entry per such interval (hi None: no upper end), after the margin 0 itself; ``selected`` is the
    middle of the least-regret interval (the lowest such interval on a tie; lo + 0.01 when it has no upper end)."""
    leads = sorted({round(r["global"][score] - r["per_layer"][score], 6) for r in rows} - {0.0})
    edges = [0.0, *(x for x in leads if x > 0)]
    spans = [(0.0, 0.0), *zip(edges, [*edges[1:], None])]
    intervals = []
    for lo, hi in spans:
        m = lo if hi == lo else (lo + 0.01 if hi is None else (lo + hi) / 2)
        intervals.append({"from": lo, "to": hi, "margin": round(m, 6), **regret(rows, score, m)})
    best = min(intervals, key=lambda i: round(i["mean_regret"], 9))
    return {"score": score, "intervals": intervals, "selected": round(best["margin"], 3)}


def family_rules(rows: list[dict], margin: float, score: str = "recal_acc") -> list[dict]:
    """Regret of fixing the ViTs' ranking to global (their attention and MLP widths sit on residual branches, so
    global ranking can thin one hard without cutting the network) and choosing the others' by ``score`` with
    ``margin`` or fixing theirs to per layer, next to choosing every network's by the score."""
    rules = {"every network by the score": None, "ViTs global, the rest by the score": {"vit": "global"},
             "ViTs global, the rest per layer": {"vit": "global", **{family(r): "per_layer" for r in rows
                                                                       if family(r) != "vit"}}}
    return [{"rule": name, "margin": margin, **regret(rows, score, margin, fixed)} for name, fixed in rules.items()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zoo", default="checkpoints/zoo/fashion_mnist")
    ap.add_argument("--split", default="val")
    ap.add_argument("--quality", help="quality.py JSON with depgraph and depgraph_local cells")
    ap.add_argument("--rows-from", nargs="+", help="earlier results of this script: re-summarise their rows "
                    "together (e.g. the meta-train and the meta-val networks'), score nothing")
    ap.add_argument("--speedups", type=float, nargs="+", default=[3.0, 4.0])
    ap.add_argument("--probes", type=int, nargs="*", default=[10, 30], help="SGD steps of each probe score (none: "
                    "accuracy and loss right after pruning only)")
    ap.add_argument("--final", default="finetuned", choices=["finetuned", "finetuned_val"],
                    help="which accuracy after the finetune says which ranking finished better: test (the quality "
                         "result's table) or val (finetuned_val, recorded since 2026-12-01; select on this)")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--train-subset", type=int, default=5000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.rows_from:
        parts = [json.loads(Path(p).read_text()) for p in a.rows_from]
        result = parts[0] if len(parts) == 1 else {
            "benchmark": "ranking_choice", "date": time.strftime("%Y-%m-%d"), "rows_from": a.rows_from,
            **{k: [pt.get(k) for pt in parts] for k in ("zoo", "split", "quality", "final", "speedups")},
            "rows": [r for pt in parts for r in pt["rows"]]}
        result.update(summary=summarise(result["rows"]), margin=margin_sweep(result["rows"]))
        result["family_rules"] = family_rules(result["rows"], result["margin"]["selected"])
        return _write(result, a.out)
    if not a.quality:
        ap.error("--quality is required unless --rows-from is given")
    torch.set_num_threads(1)
    q = json.loads(Path(a.quality).read_text())["per_network"]
    data = get_data("fashion_mnist", train_subset=a.train_subset, seed=0, val_size=5000)
    zoo = load_zoo(a.zoo)
    rows, t0 = [], time.perf_counter()
    for name in zoo.names(a.split):
        cells = q.get(f"{name}/seed0")
        if cells is None:
            continue
        base = zoo.load(name)
        for s in a.speedups:
            finals = {n: cells.get(m, {}).get(str(s), {}).get(a.final) for n, (m, _) in RANKINGS.items()}
            if None in finals.values():
                continue
            row = {"net": name, "speedup": s, **score_candidates(base, data, s, a.probes, a.lr)}
            for n in RANKINGS:
                row[n]["final"] = finals[n]
            rows.append(row)
            print(f"{name} {s}x: " + ", ".join(f"{n} final {row[n]['final']:.3f}" for n in RANKINGS), flush=True)
    result = {"benchmark": "ranking_choice", "date": time.strftime("%Y-%m-%d"), "zoo": a.zoo, "split": a.split,
              "quality": a.quality, "final": a.final, "speedups": a.speedups, "probes": a.probes, "lr": a.lr,
              "machine": {"machine": platform.machine(), "threads": 1, "torch": torch.__version__},
              "seconds": round(time.perf_counter() - t0, 1), "summary": summarise(rows),
              "margin": margin_sweep(rows), "rows": rows}
    result["family_rules"] = family_rules(rows, result["margin"]["selected"])
    _write(result, a.out)


def _write(result: dict, out: str) -> None:
    atomic_write_json(Path(out), result)
    for sc, v in result["summary"].items():
        print(f"{sc:14s} right {v['right']}/{v['n']}  mean regret {v['mean_regret']:.2f}  max {v['max_regret']:.1f}")
    m = result["margin"]
    for i in m["intervals"]:
        hi = "" if i["to"] is None else f"{100 * i['to']:.2f}"
        span = "0 (a tie keeps global)" if i["to"] == i["from"] else f"({100 * i['from']:.2f}, {hi}]"
        print(f"margin {span:>22s} pts: right {i['right']}/{i['n']}  "
              f"mean regret {i['mean_regret']:.2f}  max {i['max_regret']:.1f}")
    print(f"selected margin: {m['selected']} ({m['score']})")
    for r in result["family_rules"]:
        print(f"{r['rule']:38s} (margin {r['margin']}): right {r['right']}/{r['n']}  "
              f"mean regret {r['mean_regret']:.2f}  max {r['max_regret']:.1f}")


if __name__ == "__main__":
    main()
