"""One table of metanetwork variants: what each changed, its meta-val score (the only thing selection reads) and,
for the report, its held-out result from ``benchmarks/metanet_heldout.py``.

    python benchmarks/metanet_ablation.py RUN_DIR [RUN_DIR ...] --heldout-dir DIR --out benchmarks/results/X.json \
        [--quality RUN_NAME=quality-....json ...] [--merge benchmarks/results/X.json]

``RUN_DIR``: a metanetwork directory ``train_meta.py`` wrote (its ``config.json`` holds the settings, the best
val step and the whole val curve). ``--heldout-dir``: where ``metanet_heldout-<run name>.json`` files live.
``--quality``: a ``benchmarks/quality.py`` result for a run (the proving ground's protocol, equal budgets): the
table adds the metanetwork arm minus ``depgraph`` after the final finetune, with its 95% interval and wins.
``--merge``: an earlier table's rows are kept as they were recorded (their run directories may be long gone) and the
runs given now are added, replacing a row of the same name. Every variant is listed, the ones that lost included.
Variants may score meta-val differently (e.g. ``val_finetune_steps`` or ``val_global``), so the winner is the largest
gain of the best step over the identity metanetwork (step 0) scored the same way, not the largest raw score.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEYS = {"meta_optim": ("reg", "lam", "alpha", "task_loss", "prune_loss", "prune_mask", "mask_temperature",
                       "recalibrate_batches", "families", "batches_per_step", "steps", "lr", "val_recovery_steps",
                       "val_finetune_steps", "val_importance", "val_global", "loss_global", "val_speedup"),
        "metanet": ("hidden", "layers", "aggr", "scale", "mode")}


MATCHED = ("depgraph", "depgraph_local", "depgraph_val")  # baselines a metanetwork arm is paired with


def protocol(path: Path) -> dict:
    """From a quality.py result: per metanetwork arm and speedup, the paired difference to ``depgraph`` (global
    ranking) and, where the result has them, to ``depgraph_local`` and ``depgraph_val`` (the matched baselines of an
    arm ranked per layer or with the ranking chosen on val)."""
    r = json.loads(path.read_text())
    out = {"vs_depgraph": {}}  # vs_depgraph_local only where the result pairs an arm with it
    for pair, by_speed in r.get("paired", {}).items():
        arm, _, other = pair.partition(" - ")
        if other in MATCHED and arm in ("metaprune", "metaprune_direct"):
            out.setdefault(f"vs_{other}", {})[arm] = dict(by_speed)
    ranking = {True: "global", False: "per layer", "val": "chosen on val"}[r.get("config", {}).get("metaprune_global",
                                                                                                  True)]
    return {"file": path.name, "base_acc": r.get("base_acc_mean"), "ranking": ranking, **out}


def variant(run: Path, heldout_dir: Path | None, quality: Path | None = None) -> dict:
    from dataclasses import asdict

    from metaprune.metatrain import MetaConfig

    cfg = json.loads((run / "config.json").read_text())
    meta = {**asdict(MetaConfig()), **cfg.get("meta_optim", {})}  # runs older than an option ran its default
    arch = {"mode": "delta", **cfg.get("metanet", cfg.get("run", {}).get("metanet", {}))}  # older runs: delta
    hist = cfg.get("history") or []
    first = next((h for h in hist if h["step"] == 0), None)
    row = {"variant": run.name, "seed": cfg.get("seed"),
           "settings": {**{k: meta.get(k) for k in KEYS["meta_optim"]}, **{k: arch.get(k) for k in KEYS["metanet"]},
                        **({"zoo": Path(cfg["zoo"]).name} if cfg.get("zoo") else {})},  # the zoo it meta-trained on
           "val_best": cfg.get("best"), "val_identity": first, "val_curve": hist}
    h = heldout_dir / f"metanet_heldout-{run.name}.json" if heldout_dir else None
    if h is not None and h.is_file():
        r = json.loads(h.read_text())
        row["heldout"] = {part: r[part] for part in ("seen_families", "heldout_families")}
        row["heldout_recipe"] = {k: r.get(k) for k in ("importance", "global_pruning", "recovery_steps", "split")}
    if quality is not None:
        row["protocol"] = protocol(quality)
    return row


def _gain(row: dict) -> float:
    """Best meta-val score minus the identity metanetwork's (step 0), both scored by the run's own protocol."""
    best, ident = row["val_best"] or {}, row["val_identity"] or {}
    return best.get("pruned_acc", float("nan")) - ident.get("pruned_acc", float("nan"))


def markdown(rows: list[dict]) -> str:
    speeds = sorted({s for r in rows for part in r.get("heldout", {}).values() for s in part},
                    key=lambda s: float(s[:-1]))
    head = ["variant", "changes", "meta-val pruned acc (best step)", "identity (step 0)", "gain"]
    head += [f"held-out {s} meta − base (wins)" for s in speeds]
    refs = [f"vs_{m}" for m in MATCHED if any(f"vs_{m}" in r.get("protocol", {}) for r in rows)]
    pspeeds = sorted({s for r in rows for k in refs for arm in r.get("protocol", {}).get(k, {}).values() for s in arm},
                     key=float)
    head += [f"protocol {float(s):g}× − {k[3:]} after ft [95% CI] (wins/n)" for k in refs for s in pspeeds]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = rows[0]["settings"]
    for r in rows:
        order = [k for k in (*KEYS["meta_optim"], *KEYS["metanet"], "zoo") if k in r["settings"]]  # merged rows
        diff = ", ".join(f"{k}={r['settings'][k]}" for k in order if r["settings"][k] != base.get(k)) or "(reference)"
        best, ident = r["val_best"] or {}, r["val_identity"] or {}
        cells = [r["variant"], diff, f"{100 * best.get('pruned_acc', float('nan')):.1f} ({best.get('step')})",
                 f"{100 * ident.get('pruned_acc', float('nan')):.1f}", f"{100 * _gain(r):+.1f}"]
        for s in speeds:
            parts = [p[s] for p in r.get("heldout", {}).values() if s in p]
            if not parts:
                cells.append("–")
                continue
            n = sum(p["n"] for p in parts)
            gain = sum(p["gain"]["mean"] * p["n"] for p in parts) / n
            cells.append(f"{100 * gain:+.1f} ({sum(p['wins'] for p in parts)}/{n})")
        for k, s in [(k, s) for k in refs for s in pspeeds]:
            arms = r.get("protocol", {}).get(k, {})
            d = next((a[s]["finetuned"] for a in arms.values() if s in a), None)
            cells.append("–" if d is None else f"{100 * d['mean']:+.1f} [{100 * d['ci95'][0]:+.1f}, "
                                               f"{100 * d['ci95'][1]:+.1f}] ({d['wins']}/{d['n']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from metaprune.io import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--heldout-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quality", action="append", default=[], metavar="RUN_NAME=FILE",
                    help="a quality.py result (the proving ground's protocol) for the run of that name")
    ap.add_argument("--merge", type=Path, default=None, metavar="TABLE.json",
                    help="an earlier metanet_ablation result whose rows are kept (a run given now replaces its row)")
    args = ap.parse_args(argv)
    quality = dict(q.split("=", 1) for q in args.quality if "=" in q)
    bad = [q for q in args.quality if "=" not in q] + [f for f in quality.values() if not Path(f).is_file()]
    if bad:
        raise SystemExit(f"error: --quality wants RUN_NAME=FILE of an existing file: {', '.join(bad)}")
    missing = [str(r) for r in args.runs if not (r / "config.json").is_file()]
    if missing:
        raise SystemExit(f"error: not metanetwork runs (no config.json): {', '.join(missing)}")
    if args.merge is not None and not args.merge.is_file():
        raise SystemExit(f"error: --merge {args.merge}: no such ablation table")
    rows = [variant(r, args.heldout_dir, Path(quality[r.name]) if r.name in quality else None) for r in args.runs]
    if args.merge is not None:
        earlier = json.loads(args.merge.read_text()).get("variants", [])
        new = {r["variant"] for r in rows}
        rows = [r for r in earlier if r["variant"] not in new] + rows
    scored = [r for r in rows if r["val_best"] and r["val_identity"]]
    result = {"benchmark": "metanet_ablation", "variants": rows,
              "selected": max(scored, key=_gain)["variant"] if scored else None,
              "table": markdown(rows)}
    atomic_write_json(args.out, result)
    print(result["table"])
    print(f"selected on meta-val: {result['selected']} -> {args.out}")
    return result


if __name__ == "__main__":
    main()
