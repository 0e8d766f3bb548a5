"""Held-out zoo networks pruned with and without the metanetwork (no finetuning after pruning), at several speedups.

    python benchmarks/metanet_heldout.py --metanet checkpoints/metanet/digits --speedups 2 3
    python benchmarks/metanet_heldout.py --metanet checkpoints/metanet/fashion_mnist --speedups 3 4 \
        --importance l2_max --global --recovery-steps 50      # the reference's way: recover, then rank globally

For every network of the zoo's ``heldout`` split (never seen in meta-training or model selection): test
accuracy of (a) the original pruned with the criterion and (b) the metanetwork's rewrite pruned with the same
criterion, both to the same speedup; with ``--recovery-steps`` both arms first finetune that many SGD steps
(equal budgets: the rewrite's recovery against the same training of the original). Networks of families the metanetwork never saw (e.g. VGG held out
entirely) are reported separately: that is the transfer claim. Writes benchmarks/results/metanet_heldout-<data>.json.
``--recalibrate-batches 0`` against ``20`` isolates what stale batch-norm statistics cost a rewrite.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def main(argv=None) -> dict:
    from metaprune.data import get_data
    from metaprune.io import atomic_write_json
    from metaprune.metanet import apply_metanet, load_metanet
    from metaprune.metanet.resolve import recalibration_batches
    from metaprune.metatrain import pruned_accuracy, recover
    from metaprune.train import evaluate, recalibrate_norms
    from metaprune.zoo import load_zoo

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--metanet", default="checkpoints/metanet/digits")
    ap.add_argument("--zoo", default=None, help="zoo directory (default: the one the metanetwork was trained on)")
    ap.add_argument("--speedups", type=float, nargs="+", default=[2.0, 3.0])
    ap.add_argument("--importance", default="l2")
    ap.add_argument("--global", dest="global_pruning", action="store_true", help="rank groups across layers")
    ap.add_argument("--recovery-steps", type=int, default=0, help="SGD steps on train before pruning (both arms)")
    ap.add_argument("--recovery-lr", type=float, default=0.01)
    ap.add_argument("--recalibrate-batches", default="auto",
                    help="train batches re-estimating batch-norm statistics after the rewrite (auto: what the "
                         "metanetwork was meta-trained with; 0: keep the stored, stale ones)")
    ap.add_argument("--split", default="test", choices=["val", "test"], help="data split to score on")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    mdir = Path(args.metanet)
    recal = recalibration_batches(mdir, args.recalibrate_batches)
    meta_split = json.loads((mdir / "zoo_split.json").read_text())
    zoo = load_zoo(args.zoo or meta_split["zoo"])
    metanet = load_metanet(mdir)
    data = get_data(zoo.index["data"]["name"], **{k: v for k, v in zoo.index["data"].items()
                                                  if k in ("seed", "size", "root", "train_subset")})
    loader = data.loader(args.split, 512, shuffle=False)
    ex = data.example_inputs()
    trained_families = {zoo.members[n]["family"] for n in meta_split["train"]}
    rows, t0 = [], time.perf_counter()
    for name in zoo.names("heldout"):
        fam = zoo.members[name]["family"]
        model = zoo.load(name)
        rewritten = recalibrate_norms(apply_metanet(metanet, model, ex), data, recal)
        original = {"original": evaluate(model, loader)["acc"], "rewritten": evaluate(rewritten, loader)["acc"]}
        model = recover(model, data, args.recovery_steps, args.recovery_lr)
        rewritten = recover(rewritten, data, args.recovery_steps, args.recovery_lr)
        kw = {"importance": args.importance, "global_pruning": args.global_pruning}
        for s in args.speedups:
            row = {"network": name, "family": fam, "family_seen": fam in trained_families, "speedup_target": s,
                   "original_acc": original["original"], "rewritten_acc": original["rewritten"]}
            try:
                base = pruned_accuracy(model, ex, loader, s, **kw)
                meta = pruned_accuracy(rewritten, ex, loader, s, **kw)
                row.update(acc_base=base["acc"], acc_meta=meta["acc"], unpruned_base=base["unpruned_acc"],
                           unpruned_meta=meta["unpruned_acc"], speedup_base=base["speedup"],
                           speedup_meta=meta["speedup"])
            except ValueError as e:  # e.g. a speedup this network cannot reach
                row["error"] = str(e)
            rows.append(row)
            print(json.dumps(row), flush=True)

    def summary(sel):
        out = {}
        for s in args.speedups:
            r = [x for x in sel if x["speedup_target"] == s and "error" not in x]
            if not r:
                continue
            stat = lambda k: {"mean": statistics.mean(x[k] for x in r),  # noqa: E731
                              "std": statistics.stdev(x[k] for x in r) if len(r) > 1 else 0.0}
            out[f"{s:g}x"] = {"n": len(r), "acc_base": stat("acc_base"), "acc_meta": stat("acc_meta"),
                              "unpruned_base": stat("unpruned_base"), "unpruned_meta": stat("unpruned_meta"),
                              "original": stat("original_acc"), "rewritten": stat("rewritten_acc"),
                              "gain": stat_gain(r), "wins": sum(x["acc_meta"] > x["acc_base"] for x in r)}
        return out

    def stat_gain(r):
        g = [x["acc_meta"] - x["acc_base"] for x in r]
        return {"mean": statistics.mean(g), "std": statistics.stdev(g) if len(g) > 1 else 0.0}

    result = {
        "benchmark": "metanet_heldout", "metanet": str(mdir), "zoo": str(zoo.root), "data": data.name,
        "split": args.split, "importance": args.importance, "global_pruning": args.global_pruning,
        "recovery_steps": args.recovery_steps, "recovery_lr": args.recovery_lr, "finetune": False,
        "recalibrate_batches": recal,
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {torch.get_num_threads()} threads",
        "torch": torch.__version__, "seconds": time.perf_counter() - t0,
        "seen_families": summary([x for x in rows if x["family_seen"]]),
        "heldout_families": summary([x for x in rows if not x["family_seen"]]),
        "networks": rows,
    }
    out = Path(args.out or f"benchmarks/results/metanet_heldout-{data.name}.json")
    atomic_write_json(out, result)
    for part in ("seen_families", "heldout_families"):
        for s, v in result[part].items():
            print(f"{part} {s}: n={v['n']} base {v['acc_base']['mean']:.4f}±{v['acc_base']['std']:.4f} "
                  f"meta {v['acc_meta']['mean']:.4f}±{v['acc_meta']['std']:.4f} wins {v['wins']}/{v['n']}")
    print(f"-> {out}")
    return result


if __name__ == "__main__":
    main()
