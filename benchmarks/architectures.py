"""Every non-CNN family through train -> prune to 2x MACs -> finetune -> safe save/load, on CPU.

Families and their embedded tasks (no download; digits-derived or synthetic, see metaprune/data/synthetic.py):
LSTM (1 and 2 layers) on ``digits_seq``, GAT on the synthetic ``sbm`` graph, DGCNN on synthetic ``shapes3d``
point clouds, DenseNet and ResNeXt on ``digits`` (8x8 images).

Every family is pruned by ``metaprune.prune.prune`` (group L2, one uniform ratio, bisection on the analytic
MACs model to the target); LSTMs of any depth and GATConv go through their registered custom pruners
(``metaprune.models.sequence.LSTMPruner``, ``metaprune.models.gnn.GATConvPruner``).

    python benchmarks/architectures.py [--quick] [--out benchmarks/results/architectures-cpu.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch_pruning as tp

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import metaprune.data.synthetic  # noqa: E402,F401  (registers digits_seq, sbm, shapes3d)
import metaprune.models.dense  # noqa: E402,F401
import metaprune.models.pointcloud  # noqa: E402,F401
from metaprune.data import get_data  # noqa: E402
from metaprune.io import load_model, save_model  # noqa: E402
from metaprune.models import build_for_data  # noqa: E402
from metaprune.prune import prune  # noqa: E402
from metaprune.train import evaluate, fit  # noqa: E402


def prune_family(model: nn.Module, example_inputs, target_speedup: float, ignored_layers) -> dict:
    """Prune ``model`` in place to ``target_speedup`` with ``metaprune.prune.prune``; returns the measured record."""
    # one sample traces the same groups and per-sample MACs (and is what the torchvision sweep uses)
    r = prune(model, example_inputs[:1], target_speedup=target_speedup, ignored_layers=ignored_layers)
    return {"base_macs": r.base_macs, "pruned_macs": r.pruned_macs, "predicted_macs": r.predicted_macs,
                   "base_params": r.base_params, "pruned_params": r.pruned_params, "speedup": r.speedup,
                   "ratio": r.ratio, "channels": r.channels}


# ------------------------------------------------------------------ families
FAMILIES = {
    # name: data, data args, model, model args, train config, finetune config, ignored layers
    "lstm-1layer": dict(data="digits_seq", model="lstm", args=dict(hidden_size=64, num_layers=1),
                        train=dict(epochs=20, optimizer="adamw", lr=5e-3, weight_decay=1e-4, batch_size=64),
                        finetune=dict(epochs=8, optimizer="adamw", lr=2e-3, weight_decay=1e-4, batch_size=64),
                        ignored=["fc"]),
    "lstm-2layer": dict(data="digits_seq", model="lstm", args=dict(hidden_size=64, num_layers=2),
                        train=dict(epochs=20, optimizer="adamw", lr=5e-3, weight_decay=1e-4, batch_size=64),
                        finetune=dict(epochs=8, optimizer="adamw", lr=2e-3, weight_decay=1e-4, batch_size=64),
                        ignored=["fc"]),
    "gat": dict(data="sbm", model="gat", args=dict(hidden=8, heads=4),
                train=dict(epochs=100, optimizer="adamw", lr=1e-2, weight_decay=5e-4, batch_size=256),
                finetune=dict(epochs=40, optimizer="adamw", lr=5e-3, weight_decay=5e-4, batch_size=256),
                ignored=["conv2"]),
    "dgcnn": dict(data="shapes3d", data_args=dict(num_points=48, n_train=32, n_val=16, n_test=32), model="dgcnn",
                  args=dict(widths=(16, 16, 32), emb=64, head=32, k=8),
                  train=dict(epochs=15, optimizer="adamw", lr=5e-3, weight_decay=1e-4, batch_size=32),
                  finetune=dict(epochs=12, optimizer="adamw", lr=2e-3, weight_decay=1e-4, batch_size=32),
                  ignored=["fc"]),
    "densenet": dict(data="digits", model="densenet", args=dict(blocks=(3, 3, 3), growth=8),
                     train=dict(epochs=10, optimizer="adamw", lr=5e-3, weight_decay=1e-4, batch_size=64),
                     finetune=dict(epochs=4, optimizer="adamw", lr=1e-3, weight_decay=1e-4, batch_size=64),
                     ignored=["fc"]),
    "resnext": dict(data="digits", model="resnext", args=dict(depth=11, cardinality=4, base_width=4, width=16),
                    train=dict(epochs=10, optimizer="sgd", lr=0.05, batch_size=64),
                    finetune=dict(epochs=4, optimizer="sgd", lr=0.01, batch_size=64),
                    ignored=["fc"]),
}

TASKS = {"digits_seq": "digits rows as 8 steps x 8 features (sklearn digits, real)",
         "sbm": "synthetic stochastic-block-model graph, 600 nodes, 5 classes",
         "shapes3d": "synthetic point clouds of 8 parametric 3-D shapes (48 points, random yaw/scale/jitter)",
         "digits": "sklearn digits 8x8 (real)"}


def example_for(data, n: int = 4) -> torch.Tensor:
    return data.val.x[:n].clone()


def run_family(name: str, cfg: dict | None = None, quick: bool = False, target_speedup: float = 2.0,
               workdir=None, progress: bool = False) -> dict:
    """Train, prune to ``target_speedup``, finetune, save/load; return the measured row."""
    cfg = copy.deepcopy(cfg or FAMILIES[name])
    torch.manual_seed(0)
    data = get_data(cfg["data"], **cfg.get("data_args", {}))
    model = build_for_data(cfg["model"], data.input_shape, data.num_classes, **cfg["args"])
    train, finetune = dict(cfg["train"], progress=progress), dict(cfg["finetune"], progress=progress)
    if quick:
        train["epochs"] = max(1, train["epochs"] // 4)
        finetune["epochs"] = max(1, finetune["epochs"] // 4)
    t0 = time.perf_counter()
    fit(model, data, train)
    t_train = time.perf_counter() - t0
    test = data.loader("test", 256, shuffle=False)
    acc_before = evaluate(model, test)["acc"]
    x = example_for(data)
    t0 = time.perf_counter()
    res = prune_family(model, x, target_speedup, cfg["ignored"])
    t_prune = time.perf_counter() - t0
    acc_pruned = evaluate(model, test)["acc"]
    fit(model, data, finetune)
    acc_ft = evaluate(model, test)["acc"]
    model.eval()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        save_model(model, Path(tmp) / "ckpt", extra={"family": name})
        loaded = load_model(Path(tmp) / "ckpt")
        with torch.no_grad():
            same = bool(torch.equal(model(x), loaded(x)))
            shapes_ok = all(a.shape == b.shape for a, b in zip(model.state_dict().values(),
                                                                loaded.state_dict().values()))
    return {"family": name, "model": cfg["model"], "args": cfg["args"], "task": cfg["data"],
            "task_kind": TASKS[cfg["data"]], "acc_before": acc_before, "acc_pruned": acc_pruned,
            "acc_finetuned": acc_ft, "target_speedup": target_speedup, **res,
            "param_ratio": res["base_params"] / max(res["pruned_params"], 1),
            "save_load_identical": same and shapes_ok, "train_epochs": train["epochs"],
            "finetune_epochs": finetune["epochs"], "train_s": t_train, "prune_s": t_prune}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the epochs")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES))
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/architectures-cpu.json"))
    ap.add_argument("--resume", action="store_true", help="keep the families already measured in --out")
    args = ap.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    out_path = Path(args.out)
    done = {}
    if args.resume and out_path.exists():
        done = {r["family"]: r for r in json.loads(out_path.read_text())["results"] if "error" not in r}
    rows, t0 = [], time.perf_counter()
    for fam in args.families:
        if fam in done:
            rows.append(done[fam])
            continue
        try:
            row = run_family(fam, quick=args.quick)
        except Exception as e:  # a failing family is a result too
            row = {"family": fam, "error": f"{type(e).__name__}: {e}"}
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        out = {"machine": f"{platform.machine()} cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                          f"torch-pruning {tp.__version__}",
               "quick": args.quick, "seconds_this_run": time.perf_counter() - t0, "results": rows}
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(out, indent=2) + "\n")  # after every family: a partial run keeps its rows
    print(markdown_table(rows))


def markdown_table(rows) -> str:
    lines = ["| family | task | MACs base → pruned (speedup) | params ratio | acc before | after prune | "
             "after finetune | save/load |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['family']} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['family']} | {r['task']} | {r['base_macs'] / 1e6:.2f}M → {r['pruned_macs'] / 1e6:.2f}M "
                     f"({r['speedup']:.2f}×) | {r['param_ratio']:.2f}× | {r['acc_before']:.3f} | "
                     f"{r['acc_pruned']:.3f} | {r['acc_finetuned']:.3f} | "
                     f"{'identical' if r['save_load_identical'] else 'DIFFERS'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
