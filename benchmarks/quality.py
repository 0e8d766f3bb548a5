"""MetaPruning vs DepGraph vs random on held-out zoo networks, side by side, at equal training budgets.

    python benchmarks/quality.py                                        # digits zoo, CPU, minutes
    python benchmarks/quality.py data=fashion_mnist zoo=fashion_mnist   # the proving ground (hours on CPU)
    python benchmarks/quality.py experiment=resnet56_cifar10            # paper scale

Every method receives the same trained checkpoint and trains ``pre_epochs + finetune_epochs`` (E + F) in total:
  random            random group importance, prune, finetune E + F
  depgraph          DepGraph's CIFAR recipe: group L2 normalised by the group maximum, ranked *globally*; E + F
  depgraph_local    the same criterion with one pruning ratio per layer (per-layer ranking); E + F
  depgraph_val      the same criterion, global or per-layer ranking chosen per network and target on val
                    (``metaprune.prune.ranking``: both pruned, batch norms re-estimated, scored on val); E + F
  depgraph_attention  the same criterion, ranked globally in networks with attention layers and per layer in the
                    others (``prune.global_pruning=attention``, selected on the zoo's meta-train and meta-val); E + F
  depgraph_sl       DepGraph sparse learning (GroupNormPruner regulariser) for E, prune, finetune F
  metaprune         metanetwork rewrite, E epochs of recovery finetuning, prune (global), finetune F
  metaprune_direct  metanetwork rewrite, prune at once (global), finetune E + F
  metaprune_identity  metaprune's pipeline without the rewrite (E epochs of training, prune, F): what the
                    rewrite itself adds
``metaprune_global=false`` ranks the metaprune methods per layer (for a metanetwork selected that way),
``metaprune_global=val`` chooses their ranking on val as ``depgraph_val`` does (its matched baseline),
``metaprune_global=attention`` ranks them as ``depgraph_attention`` does (its matched baseline).
``metaprune_max_val_drop=P`` undoes a rewrite that costs more than P points of val accuracy (batch norms re-estimated),
as ``prune.py metanet.max_val_drop=P`` does: that network goes on with its own weights (and metaprune's E epochs).
Accuracy on the test split right after pruning ("no finetune") and after the final finetune, whose epoch is
kept by **val** accuracy (that val accuracy is kept too, ``finetuned_val``, for choices made on val); nothing is
selected on test. ``recalibrate_after_prune=N`` also scores the pruned
network right after pruning with its batch-norm statistics re-estimated on N train batches ("recalibrated":
forward passes only, on a copy; the stored statistics are stale once channels are gone, which puts every
method at chance at 3x and hides the differences the paper's figure shows); ``prune_only=true`` stops there
(no final finetune: the right-after-pruning curve alone, at a fraction of the cost). Each finished (network, seed, method) cell is kept under
``cells_dir``, so an interrupted run resumes, a new method reuses the others' cells, and ``shard=I num_shards=N``
splits the cells over N processes; ``cells_from=[quality-<tag>.json]`` reads back the cells of an earlier
result's methods that apply no metanetwork. Paired differences between methods (per network,
averaged over pruning seeds) with a 95% t-interval over networks, wins and losses, and per-family means go in
``quality-<tag>.json``; ``.png`` plots accuracy against speedup, one line per method with its spread.
"""
from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metaprune.cli import check_points, friendly_errors, sweep_context, to_dict  # noqa: E402
from metaprune.io import atomic_write_json  # noqa: E402

METHODS = ("random", "depgraph", "depgraph_local", "depgraph_val", "depgraph_attention", "depgraph_sl", "metaprune",
           "metaprune_direct", "metaprune_identity")
PRE_TRAINED = ("depgraph_sl", "metaprune", "metaprune_identity")  # methods that spend E epochs before pruning
REWRITES = ("metaprune", "metaprune_direct")  # methods that apply the metanetwork
LIFTED = ("rewritten_acc", "recovered_acc", "recalibrate_batches",  # per network in a cell, not per speedup
          "rewrite_kept", "rewritten_val_acc", "base_val_acc")
PHASES = ("no_finetune", "recalibrated", "finetuned")
# metaprune_global -> its cells' key suffix (true keeps the key cells had before the other rankings existed)
METAPRUNE_RANKINGS = {True: "", False: "-local", "val": "-valrank", "attention": "-attnrank"}
# the metanetwork arms' baselines beside depgraph and random: depgraph_sl (the paper's) and the matched ones
MATCHED = ("depgraph_sl", "depgraph_local", "depgraph_val", "depgraph_attention")


def _ft_cfg(c: dict, epochs: int, seed: int, select: str = "last") -> dict:
    return {**c["finetune"], "epochs": epochs, "seed": seed, "device": c["device"], "progress": False,
            "select": select}


def _metaprune_ranking(c: dict) -> bool | str:
    """``metaprune_global``: true (global), false (per layer), "val" (chosen per network on val) or "attention"
    (global for networks with attention layers, per layer for the others)."""
    g = c.get("metaprune_global", True)
    if g not in METAPRUNE_RANKINGS:
        raise ValueError(f"metaprune_global={g!r} must be true, false, val or attention")
    return g


def _criterion(method: str, c: dict) -> tuple[str, bool | str]:
    """(importance, ranking: True global, False per layer, "val" chosen on val, "attention" by architecture) each
    method prunes with."""
    if method == "random":
        return "random", False
    if method.startswith("metaprune"):
        return c["importance"], _metaprune_ranking(c)
    return c["importance"], {"depgraph_local": False, "depgraph_val": "val", "depgraph_attention": "attention"}.get(
        method, True)


def run_method(base, data, metanet, c: dict, seed: int, method: str, speedups=None) -> dict:
    """One method at each of ``speedups`` (default: the config's) on one network: {speedup: {...}, "seconds": s}."""
    from metaprune.metanet import apply_metanet
    from metaprune.prune import prune
    from metaprune.prune.ranking import prune_ranked_on_val
    from metaprune.prune.sparse import sparse_learning_hook
    from metaprune.train import evaluate, fit, ranking_scorer, recalibrate_norms, recalibrated_accuracy, seed_everything

    seed_everything(seed)  # each method's cell is reproducible on its own, whichever others ran
    x = data.example_inputs()
    test, val = data.loader("test", 512, shuffle=False), data.loader("val", 512, shuffle=False)
    acc = lambda m: evaluate(m, test, c["device"])["acc"]
    pre, post = int(c["pre_epochs"]), int(c["finetune_epochs"])
    after_recal, prune_only = _after_prune(c)
    t0 = time.perf_counter()
    out: dict = {}
    start = copy.deepcopy(base)
    if method == "depgraph_sl" and pre:
        hook = sparse_learning_hook(start, x, **c["sparse_learning"])
        fit(start, data, _ft_cfg(c, pre, seed), after_backward=hook, desc="sl")
    elif method.startswith("metaprune"):
        if method in REWRITES:
            start = apply_metanet(metanet, start, x)
            recal = _recalibration(c)
            if recal:  # forward passes only: the stored batch-norm statistics are stale after the rewrite
                recalibrate_norms(start, data, recal, c["finetune"]["batch_size"], seed, c["device"])
                out["recalibrate_batches"] = recal
            out["rewritten_acc"] = acc(start)
            drop = _max_val_drop(c)
            if drop is not None:  # the rewrite is undone where it costs more than ``drop`` points on val
                out["rewritten_val_acc"] = evaluate(start, val, c["device"])["acc"]
                out["base_val_acc"] = evaluate(base, val, c["device"])["acc"]
                out["rewrite_kept"] = out["rewritten_val_acc"] >= out["base_val_acc"] - drop / 100
                if not out["rewrite_kept"]:
                    start = copy.deepcopy(base)
        if method != "metaprune_direct" and pre:
            fit(start, data, _ft_cfg(c, pre, seed), desc="recovery")
            out["recovered_acc"] = acc(start)
    spent = pre if method in PRE_TRAINED else 0
    crit, ranking = _criterion(method, c)
    for s in c["speedups"] if speedups is None else speedups:
        prune_fn = lambda net, g: prune(net, x, target_speedup=float(s), importance=crit, global_pruning=g,  # noqa: E731
                                        seed=seed)
        chosen = None
        try:
            if ranking == "val":
                m, res, chosen = prune_ranked_on_val(start, prune_fn, ranking_scorer(
                    data, c["finetune"]["batch_size"], seed, c["device"], _probe_steps(c), c["finetune"]["lr"]),
                    margin=_margin(c))
            else:
                m = copy.deepcopy(start)
                res = prune_fn(m, ranking)
        except ValueError as e:  # the target removes a whole layer: recorded, left out of the statistics
            out[str(s)] = {"unreachable": str(e)}
            continue
        cell = {"no_finetune": acc(m), "speedup": res.speedup, "params_ratio": res.param_ratio,
                "epochs_before_prune": spent, "epochs_after_prune": 0 if prune_only else pre + post - spent}
        if chosen is not None:
            cell["ranking"] = chosen
        if after_recal:
            cell["recalibrated"] = recalibrated_accuracy(m, data, after_recal, "test", c["finetune"]["batch_size"],
                                                         seed, c["device"])
        if not prune_only:
            fit(m, data, _ft_cfg(c, pre + post - spent, seed, select="best_val"), desc="ft")
            cell["finetuned"] = acc(m)
            cell["finetuned_val"] = evaluate(m, val, c["device"])["acc"]
        out[str(s)] = cell
    out["seconds"] = time.perf_counter() - t0
    return out


def assemble(base_acc: float, family: str, cells: dict) -> dict:
    """One network-seed record from its per-method cells (the shape summarise / paired read)."""
    rec = {"family": family, "base_acc": base_acc, "seconds": {}}
    for method, cell in cells.items():
        rec["seconds"][method] = cell["seconds"]
        for k in LIFTED:
            if k in cell:
                rec[f"{method}_{k}"] = cell[k]
        rec[method] = {k: v for k, v in cell.items() if k != "seconds" and k not in LIFTED}
    return rec


def cell_of(rec: dict, method: str) -> dict:
    """``method``'s cell back from a network-seed record (the inverse of :func:`assemble`)."""
    return {**rec[method], **{k: rec[f"{method}_{k}"] for k in LIFTED if f"{method}_{k}" in rec},
            "seconds": rec["seconds"][method]}


def _cells(per_net: dict, method: str, s, phase: str) -> dict[str, float]:
    """network -> value at (method, speedup, phase), averaged over the network's pruning seeds."""
    by_net: dict[str, list[float]] = {}
    for key, r in per_net.items():
        cell = r.get(method, {}).get(str(s), {})
        if phase in cell:
            by_net.setdefault(key.rsplit("/seed", 1)[0], []).append(cell[phase])
    return {n: statistics.mean(v) for n, v in by_net.items()}


def _t95(n: int) -> float:
    """Two-sided 95% Student-t quantile for a mean over ``n`` paired differences."""
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1))


def paired(per_net: dict, a: str, b: str, s, phase: str) -> dict | None:
    """Method ``a`` minus method ``b`` per network: mean, 95% interval over networks, wins/losses/ties."""
    ca, cb = _cells(per_net, a, s, phase), _cells(per_net, b, s, phase)
    nets = sorted(set(ca) & set(cb))
    if len(nets) < 2:
        return None
    d = [ca[n] - cb[n] for n in nets]
    mean, sd = statistics.mean(d), statistics.stdev(d)
    half = _t95(len(d)) * sd / math.sqrt(len(d))
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": len(d), "wins": sum(x > 0 for x in d),
            "losses": sum(x < 0 for x in d), "separated": mean - half > 0 or mean + half < 0}


def summarise(per_net: dict, methods, speedups) -> dict:
    table = {}
    for method in methods:
        for s in speedups:
            for phase in PHASES:
                vals = [r[method][str(s)][phase] for r in per_net.values() if phase in r.get(method, {}).get(str(s), {})]
                if vals:
                    table.setdefault(method, {}).setdefault(str(s), {})[phase] = {
                        "mean": statistics.mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                        "n": len(vals)}
    return table


def comparisons(per_net: dict, methods, speedups) -> dict:
    """Paired differences: every method against ``depgraph`` and against ``random``, and the metanetwork arms
    against ``depgraph_sl`` (the paper's comparison), ``depgraph_local`` (their matched baseline when they rank
    per layer, ``metaprune_global=false``), ``depgraph_val`` (matched when ``metaprune_global=val``) and
    ``depgraph_attention`` (matched when ``metaprune_global=attention``), per speedup and phase."""
    out = {}
    for ref in ("depgraph", "random", *MATCHED):
        arms_only = ref in MATCHED
        for method in methods:
            if method == ref or ref not in methods or (arms_only and not method.startswith("metaprune")):
                continue
            for s in speedups:
                for phase in PHASES:
                    p = paired(per_net, method, ref, s, phase)
                    if p is not None:
                        out.setdefault(f"{method} - {ref}", {}).setdefault(str(s), {})[phase] = p
    return out


def by_family(per_net: dict, methods, speedups) -> dict:
    """Mean accuracy per family (and base accuracy), per method, speedup and phase."""
    fams = sorted({r["family"] for r in per_net.values()})
    out = {}
    for fam in fams:
        sub = {k: r for k, r in per_net.items() if r["family"] == fam}
        out[fam] = {"networks": len({k.rsplit("/seed", 1)[0] for k in sub}),
                    "base_acc": statistics.mean(r["base_acc"] for r in sub.values()),
                    "summary": summarise(sub, methods, speedups)}
    return out


def _phases(table: dict) -> list[str]:
    """The phases some cell of ``table`` ({method: {speedup: {phase: ...}}}) has, in PHASES order."""
    seen = {ph for by_s in table.values() for cell in by_s.values() for ph in cell}
    return [ph for ph in PHASES if ph in seen]


def markdown(table: dict, speedups, base_mean: float, paired_diffs: dict | None = None) -> str:
    phases = _phases(table)
    short = {"no_finetune": "no-ft", "recalibrated": "recal", "finetuned": "ft"}
    head = "| method | " + " | ".join(f"{s}× {short[ph]}" for s in speedups for ph in phases) + " |"
    sep = "|---|" + "---|" * (len(speedups) * len(phases))
    rows = [head, sep]
    for method, by_s in table.items():
        cells = []
        for s in speedups:
            r = by_s.get(str(s), {})
            for ph in phases:
                cells.append(f"{100 * r[ph]['mean']:.1f} ± {100 * r[ph]['std']:.1f}" if ph in r else "–")
        rows.append(f"| {method} | " + " | ".join(cells) + " |")
    text = f"Base (unpruned) test accuracy: {100 * base_mean:.1f}%\n\n" + "\n".join(rows)
    phase = "finetuned" if "finetuned" in phases or not phases else phases[-1]
    if paired_diffs:
        rows = ["| paired difference (points) | " + " | ".join(f"{s}× {short[phase]}" for s in speedups) + " |",
                "|---|" + "---|" * len(speedups)]
        for pair, by_s in paired_diffs.items():
            cells = []
            for s in speedups:
                p = by_s.get(str(s), {}).get(phase)
                cells.append("–" if p is None else
                             f"{100 * p['mean']:+.1f} [{100 * p['ci95'][0]:+.1f}, {100 * p['ci95'][1]:+.1f}] "
                             f"{p['wins']}/{p['losses']}" + (" **" if p["separated"] else ""))
            rows.append(f"| {pair} | " + " | ".join(cells) + " |")
        text += ("\n\nPaired over networks: mean [95% interval] wins/losses; ** = interval excludes 0\n\n"
                 + "\n".join(rows))
    return text


def plot(table: dict, speedups, path: Path, title: str, base_mean: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"no_finetune": "right after pruning", "recalibrated": "right after pruning, batch norms re-estimated",
              "finetuned": "after equal finetuning (epoch by val)"}
    phases = _phases(table) or ["finetuned"]
    fig, axes = plt.subplots(1, len(phases), figsize=(5.5 * len(phases), 4.2), sharey=False, squeeze=False)
    axes = axes[0]
    for ax, phase in zip(axes, phases):
        name = titles[phase]
        for method, by_s in table.items():
            xs = [float(s) for s in speedups if phase in by_s.get(str(s), {})]
            mu = [100 * by_s[str(s)][phase]["mean"] for s in speedups if phase in by_s.get(str(s), {})]
            sd = [100 * by_s[str(s)][phase]["std"] for s in speedups if phase in by_s.get(str(s), {})]
            line, = ax.plot(xs, mu, marker="o", label=method)
            ax.fill_between(xs, [m - d for m, d in zip(mu, sd)], [m + d for m, d in zip(mu, sd)],
                            color=line.get_color(), alpha=0.12)
        if base_mean is not None:
            ax.axhline(100 * base_mean, color="grey", ls="--", lw=1, label="unpruned")
        ax.set(xlabel="MACs speedup (×, log scale)", ylabel="test accuracy (%)", title=name, xscale="log")
        ax.set_xticks([float(s) for s in speedups], [f"{s:g}" for s in speedups])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _recipe_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cells_dir(c: dict) -> Path:
    """Where finished cells are kept, keyed by everything all methods share: a rerun with the same settings
    resumes, a changed setting starts afresh. Each method's own settings key its file name (``_cell_path``), so
    adding a method, or retraining the metanetwork, reruns only that method; a cell holds its method's speedups,
    so asking for another speedup computes only that one."""
    keys = ("data", "zoo", "split", "importance", "pre_epochs", "finetune_epochs", "finetune", "device")
    return Path(c.get("cells_dir") or "outputs/quality/cells") / _recipe_hash({k: c.get(k) for k in keys})


def cells_from_results(c: dict, cells_dir: Path, paths) -> int:
    """``cells_from=[quality-<tag>.json, ...]``: the cells earlier results hold, written back where this run looks for
    them (speedups a cell already has are kept), so a committed result's methods need not run again on a fresh
    clone. Only results run with this run's shared settings (the same cells directory) are read, and only methods
    that apply no metanetwork: a metanetwork's cells are keyed by its weights, which a result file does not hold.
    Returns how many cells were written or extended."""
    written = 0
    for p in paths or ():
        old = json.loads(Path(p).read_text())
        oc = {**old["config"], "cells_dir": c.get("cells_dir")}
        if _cells_dir(oc) != cells_dir:
            raise ValueError(f"cells_from: {p} was run with other shared settings (data, zoo, split, importance, "
                             "epochs or finetune) than this run; its cells would not be this run's")
        for key, rec in old["per_network"].items():
            name, seed = key.rsplit("/seed", 1)
            for method in oc["methods"]:
                if method in REWRITES or method not in rec:
                    continue
                cell = cell_of(rec, method)
                path = _cell_path(cells_dir, name, int(seed), method, oc)
                have = json.loads(path.read_text()) if path.is_file() else {}
                if set(cell) - set(have):
                    atomic_write_json(path, {**cell, **have})
                    written += 1
    return written


def _metanet_digest(path) -> str:
    """Content hash of a metanetwork's weights: a retrained metanetwork gets fresh cells (notes added to its
    config.json do not)."""
    return hashlib.sha256((Path(path) / "metanet.safetensors").read_bytes()).hexdigest()[:16]


def _recalibration(c: dict) -> int:
    """Batch-norm recalibration batches after the rewrite: what the metanetwork was meta-trained with."""
    from metaprune.metanet.resolve import recalibration_batches

    return recalibration_batches(Path(c["metanet_checkpoint"]))


def _max_val_drop(c: dict) -> float | None:
    """``metaprune_max_val_drop``: points of val accuracy a rewrite may cost before it is undone (None: kept)."""
    return check_points("metaprune_max_val_drop", c.get("metaprune_max_val_drop"))


def _probe_steps(c: dict) -> int:
    """``ranking_probe_steps``: SGD steps each candidate ranking trains before it is scored (0: val accuracy)."""
    from metaprune.train.loop import check_probe_steps

    return check_probe_steps(c.get("ranking_probe_steps") or 0, "ranking_probe_steps")


def _margin(c: dict) -> float:
    """``ranking_margin``: how far global ranking must lead on val to be kept (0: the higher score wins)."""
    from metaprune.prune.ranking import check_margin

    return check_margin(c.get("ranking_margin") or 0.0)


def _after_prune(c: dict) -> tuple[int, bool]:
    """(batch-norm recalibration batches for the "recalibrated" score, whether the final finetune is skipped)."""
    n = int(c.get("recalibrate_after_prune") or 0)
    if n < 0:
        raise ValueError(f"recalibrate_after_prune={n} must be >= 0 (0: no recalibrated score)")
    return n, bool(c.get("prune_only", False))


def _cell_path(cells_dir: Path, name: str, seed: int, method: str, c: dict) -> Path:
    own = {"depgraph_sl": c.get("sparse_learning")}.get(method)
    if method.startswith("metaprune"):  # the identity arm uses no metanetwork: only the ranking keys it
        own = _metanet_digest(c["metanet_checkpoint"]) if method in REWRITES else "identity"
        recal = _recalibration(c) if method in REWRITES else 0
        own = f"{own}-recal{recal}" if recal else own  # (0: the key cells had before recalibration existed)
        own = f"{own}{METAPRUNE_RANKINGS[_metaprune_ranking(c)]}"
        drop = _max_val_drop(c) if method in REWRITES else None
        if drop is not None:
            own = f"{own}-guard{drop:g}"
    probe, margin = _probe_steps(c), _margin(c)
    if probe and _criterion(method, c)[1] == "val":  # the ranking choice's own score (0 keeps the earlier keys)
        own = f"{own}-probe{probe}" if own is not None else f"probe{probe}"
    if margin and _criterion(method, c)[1] == "val":  # ... and its margin (0 keeps the earlier keys)
        own = f"{own}-margin{margin:g}" if own is not None else f"margin{margin:g}"
    after_recal, prune_only = _after_prune(c)
    if after_recal or prune_only:  # other phases per cell: their own file (the defaults keep the keys cells had)
        own = [own, {"recalibrate_after_prune": after_recal, "prune_only": prune_only}]
    suffix = f"-{_recipe_hash(own)}" if own is not None else ""
    return cells_dir / f"{name}-seed{seed}" / f"{method}{suffix}.json"


def run(c: dict) -> dict:
    from metaprune.data import get_data
    from metaprune.metanet import load_metanet
    from metaprune.metatrain.loop import check_families, family_list
    from metaprune.train import split_data_cfg
    from metaprune.zoo import build_zoo, load_zoo

    bad = [m for m in c["methods"] if m not in METHODS]
    if bad:
        raise ValueError(f"methods: unknown {bad}; known: {', '.join(METHODS)}")
    if int(c["pre_epochs"]) < 0 or int(c["finetune_epochs"]) < 0:
        raise ValueError(f"pre_epochs={c['pre_epochs']} and finetune_epochs={c['finetune_epochs']} must be >= 0")
    _probe_steps(c), _margin(c)  # refused before any data is read
    c["data"] = {**c["data"], **(c["zoo"].get("data") or {})}  # finetune on the data the zoo was trained on
    if c.get("train_subset"):  # ... or on fewer of its images, to trade data for CPU time (recorded in the cells key)
        c["data"]["train_subset"] = int(c["train_subset"])
    data_kwargs, _ = split_data_cfg(c["data"])
    data = get_data(**data_kwargs)
    root = Path(c["zoo"].get("root", "checkpoints/zoo")) / c["zoo"]["name"]
    zoo = load_zoo(root) if (root / "index.json").exists() else build_zoo(c["zoo"], c["data"], c["optim"], root=root)
    fams = family_list(c.get("families"))
    check_families(fams, [m["family"] for m in zoo.members.values()], key="families")
    names = zoo.names(c["split"], fams)[: c["max_networks"] or None]
    if not names:
        raise ValueError(f"zoo {root} has no {c['split']!r} networks")
    metanet = load_metanet(c["metanet_checkpoint"]) if any(m in REWRITES for m in c["methods"]) else None
    shard, num_shards = int(c.get("shard") or 0), int(c.get("num_shards") or 1)
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard={shard} must lie in [0, num_shards={num_shards})")
    cells_dir = _cells_dir(c)
    if c.get("cells_from"):
        print(f"cells_from: {cells_from_results(c, cells_dir, c['cells_from'])} cell(s) read from earlier results")
    t0 = time.perf_counter()
    jobs = [(name, seed, method) for name in names for seed in c["seeds"] for method in c["methods"]]
    wanted = [str(s) for s in c["speedups"]]
    base_accs: dict[str, float] = {}
    cells: dict[tuple, dict] = {}
    for i, (name, seed, method) in enumerate(jobs):
        path = _cell_path(cells_dir, name, seed, method, c)
        cell = json.loads(path.read_text()) if path.is_file() else {}  # finished earlier, or by another shard
        missing = [float(s) for s in wanted if s not in cell]
        if missing and not c.get("report_only") and i % num_shards == shard:
            t = time.perf_counter()
            new = run_method(zoo.load(name), data, metanet, c, seed, method, missing)
            cell = {**cell, **new, "seconds": cell.get("seconds", 0.0) + new["seconds"]}
            atomic_write_json(path, cell)
            print(f"[{i + 1}/{len(jobs)}] {name} seed {seed} {method}: {time.perf_counter() - t:.0f}s", flush=True)
        if all(s in cell for s in wanted):
            cells[name, seed, method] = cell
    if c.get("report_only"):  # the table of what is finished: methods and networks with every wanted speedup
        names = [n for n in names if all((n, s, m) in cells for s in c["seeds"] for m in c["methods"])]
        print(f"report_only: {len(names)} network(s) have every method at every speedup")
        if not names:
            raise ValueError(f"report_only: no network has all of {c['methods']} at {wanted} in {cells_dir}")
        jobs = [(n, s, m) for n, s, m in jobs if n in names]
    if len(cells) < len(jobs):
        print(f"{len(cells)}/{len(jobs)} cells done in {cells_dir}; the other shards' cells are still running: "
              "rerun without shard (or with any shard) once they finish to write the result")
        return {}
    from metaprune.train import evaluate

    test = data.loader("test", 512, shuffle=False)
    for name in names:
        base_accs[name] = evaluate(zoo.load(name), test, c["device"])["acc"]
    per_net = {f"{n}/seed{s}": assemble(base_accs[n], zoo.members[n]["family"],
                                       {m: cells[n, s, m] for m in c["methods"]})
               for n in names for s in c["seeds"]}
    table = summarise(per_net, c["methods"], c["speedups"])
    diffs = comparisons(per_net, c["methods"], c["speedups"])
    seconds = {m: sum(r["seconds"][m] for r in per_net.values()) for m in c["methods"]}
    base_mean = statistics.mean(r["base_acc"] for r in per_net.values())
    date = dt.date.today().isoformat()
    tag = c["tag"] or f"{data.name}-{date}"
    out_dir = Path(c["out_dir"])
    result = {"benchmark": "quality", "date": date, "seconds": time.perf_counter() - t0,
              "hardware": {"machine": platform.machine(), "processor": platform.processor(),
                           "threads": torch.get_num_threads(), "device": c["device"]},
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "loadavg": os.getloadavg(), "config": c, "networks": names, "summary": table,
              "paired": diffs, "families": by_family(per_net, c["methods"], c["speedups"]),
              "method_seconds": seconds, "per_network": per_net, "base_acc_mean": base_mean}
    atomic_write_json(out_dir / f"quality-{tag}.json", result)
    result.update(tag=tag, json=str(out_dir / f"quality-{tag}.json"))
    plot(table, c["speedups"], out_dir / f"quality-{tag}.png",
         f"{data.name}: {len(names)} held-out networks × {len(c['seeds'])} seed(s), test accuracy", base_mean)
    md = markdown(table, c["speedups"], base_mean, diffs)
    print(md)
    return result


def log_result(c: dict, result: dict) -> None:
    """The table's means and paired differences as a wandb run (``job_type=benchmark``, the sweep's group), with
    the JSON and plot as an artifact; nothing with ``logger=none``."""
    from metaprune.logging import make_logger

    logger = make_logger(c.get("logger"), config=c, name=f"quality-{result['tag']}", **sweep_context("benchmark"))
    try:
        flat = {f"{m}/{s}x/{ph}": v["mean"] for m, by_s in result["summary"].items() for s, cell in by_s.items()
                for ph, v in cell.items()}
        flat.update({f"paired/{k}/{s}x/{ph}": v["mean"] for k, by_s in result["paired"].items()
                     for s, cell in by_s.items() for ph, v in cell.items()})
        logger.summary(flat)
        logger.artifact(result["json"], name=f"quality-{result['tag']}", kind="result")
    finally:
        logger.finish()


@hydra.main(version_base="1.3", config_path="../configs", config_name="quality")
@friendly_errors
def main(cfg: DictConfig) -> None:
    c = to_dict(cfg)
    result = run(c)
    if result:
        log_result(c, result)


if __name__ == "__main__":
    main()
