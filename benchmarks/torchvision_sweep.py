"""Grouping coverage: every torchvision classification constructor through NetGraph conversion, DepGraph
grouping and pruning to 2x MACs, with the error message of each failure.

For each model (``weights=None``, ``num_classes=10``, batch 1 at 64x64, or the size it needs), in a worker
process with a per-model time limit and a memory cap:
  graph  ``metaprune.graph.to_graph`` + ``from_graph`` back into a copy, bit-exact (models up to
         ``--max-graph-params``; a NetGraph holds one edge per weight)
  prune  ``metaprune.prune.prune(model, x, target_speedup=2)`` (DepGraph groups, classifier protected), then a
         forward pass of the pruned model; status ``pruned``
  group  only when pruning fails: do ``metaprune.prune.groups`` groups build? status ``grouped`` (groups
         build, pruning fails) or ``failed`` (grouping fails), with the error message
Models above ``--max-params`` are skipped with the reason recorded (memory and time on a 2-core CPU).

    python benchmarks/torchvision_sweep.py [--timeout 90] [--only resnet18 vit_b_16 [--update]] \
        [--out benchmarks/results/torchvision_sweep-cpu.json]

``--update`` re-runs only the ``--only`` models and replaces their records in ``--out``, keeping the others.
The same constructors under a parameter cap also run in ``benchmarks/coverage.py --suites torchvision`` (its
constructor arguments and input sizes come from here), pruned there by metaprune and by torch-pruning side by side.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# input sizes for models that do not run at 64x64
INPUT_SIZE = {"inception_v3": 96, "maxvit_t": 224}
# constructor arguments for models whose input size is a constructor argument
EXTRA_ARGS = {name: {"image_size": 64} for name in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32")}
EXTRA_ARGS["vit_h_14"] = {"image_size": 56}
EXTRA_ARGS["inception_v3"] = {"aux_logits": False, "init_weights": False}
EXTRA_ARGS["googlenet"] = {"aux_logits": False, "init_weights": False}


def classification_models() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _first_line(e: BaseException, limit: int = 300) -> str:
    msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return msg[:limit]


def _count_params_meta(name: str, args: dict) -> int:
    import torch
    import torchvision.models as tvm

    try:  # no memory, no init time; some constructors (RegNet) compute on their tensors and refuse "meta"
        with torch.device("meta"):
            model = tvm.get_model(name, weights=None, **args)
    except (NotImplementedError, RuntimeError):
        model = tvm.get_model(name, weights=None, **args)
    return sum(p.numel() for p in model.parameters())


def _cap_memory(limit_gb: float) -> None:
    import resource

    try:
        with open("/proc/self/status") as f:
            vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
        cap = int(vm + limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    except (OSError, ValueError, StopIteration):
        pass


def run_one(name: str, max_params: float = 60e6, max_graph_params: float = 3e6, mem_gb: float | None = 3.0,
            threads: int | None = 1) -> dict:
    """Sweep one torchvision constructor; returns a record (never raises for a model's own failure).

    ``mem_gb``: address-space cap added to this process (workers only; None leaves it); ``threads``: torch threads.
    """
    import copy
    import warnings

    import torch
    import torchvision.models as tvm

    warnings.filterwarnings("ignore")
    if threads:
        torch.set_num_threads(threads)
    from metaprune.prune import find_output_layers, groups, prune

    size = INPUT_SIZE.get(name, 64)
    args = {"num_classes": 10, **EXTRA_ARGS.get(name, {})}
    rec = {"model": name, "input": [1, 3, size, size], "args": args}
    t0 = time.perf_counter()
    try:
        rec["params"] = _count_params_meta(name, args)
    except Exception as e:
        rec.update(status="failed", stage="build", error=_first_line(e))
        return rec
    if rec["params"] > max_params:
        rec.update(status="skipped", reason=f"{rec['params'] / 1e6:.0f}M parameters > --max-params "
                                             f"{max_params / 1e6:.0f}M (memory/time budget of a 2-core CPU run)")
        return rec
    if mem_gb:
        _cap_memory(mem_gb)
    torch.manual_seed(0)
    try:
        model = tvm.get_model(name, weights=None, **args).eval()
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            base_out = model(x)
    except Exception as e:
        rec.update(status="failed", stage="build", error=_first_line(e))
        return rec

    # 1. NetGraph round trip (on the unpruned model)
    if rec["params"] <= max_graph_params:
        try:
            from metaprune.graph import from_graph, to_graph

            g = to_graph(model, x)
            back = from_graph(g, copy.deepcopy(model))
            exact = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
            rec["graph"] = {"ok": bool(exact), "nodes": int(g.num_nodes), "edges": int(g.edge_index.shape[1]),
                            "groups": len(getattr(g, "groups", []) or [])}
            if not exact:
                rec["graph"]["error"] = "round trip changed parameters"
        except Exception as e:
            rec["graph"] = {"ok": False, "error": _first_line(e)}
    else:
        rec["graph"] = {"ok": None, "skipped": f"{rec['params'] / 1e6:.1f}M parameters > --max-graph-params"}

    # 2. prune to 2x MACs (DepGraph groups inside) and run the pruned model
    try:
        res = prune(model, x, target_speedup=2.0)
        with torch.no_grad():
            out = model(x)
        if out.shape != base_out.shape or not torch.isfinite(out).all():
            raise RuntimeError(f"pruned model output {tuple(out.shape)} (finite={bool(torch.isfinite(out).all())}) "
                               f"differs from {tuple(base_out.shape)}")
        rec.update(status="pruned", groups=len(res.channels), speedup=round(res.speedup, 3),
                   param_ratio=round(res.param_ratio, 3), base_macs=res.base_macs, pruned_macs=res.pruned_macs)
    except Exception as e:
        rec.update(error=_first_line(e), traceback_tail=traceback.format_exc().strip().splitlines()[-3:])
        # 3. on failure: do the DepGraph groups themselves build (on a fresh copy)?
        try:
            torch.manual_seed(0)
            fresh = tvm.get_model(name, weights=None, **args).eval()
            rec["groups"] = len(groups(fresh, x, find_output_layers(fresh, x)))
            rec.update(status="grouped", stage="prune")
        except Exception as e2:
            rec.update(status="failed", stage="group", error=_first_line(e2),
                       traceback_tail=traceback.format_exc().strip().splitlines()[-3:])
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


def _pool(ctx):
    # a fresh worker per model: the memory cap and a failed model's leftovers must not reach the next one
    pool = ctx.Pool(1, maxtasksperchild=1)
    return pool


def sweep(names, timeout: float, out_path: Path | None = None, resume: bool = False, update: bool = False,
          **kw) -> dict:
    """Run ``run_one`` on each name in a worker with ``timeout`` seconds per model; ``resume`` keeps the
    finished (not timed-out) records already in ``out_path``; ``update`` keeps every record of ``out_path`` whose
    model is not in ``names`` (the file then holds the earlier sweep with these models re-run)."""
    done, earlier = {}, None
    if (resume or update) and out_path and out_path.exists():
        earlier = json.loads(out_path.read_text())
    if resume and earlier:
        done = {r["model"]: r for r in earlier["results"] if r["status"] != "timeout"}
    if not update:
        earlier = None
    ctx = mp.get_context("spawn")
    pool = _pool(ctx)
    results, t0 = [], time.perf_counter()
    try:
        for name in names:
            if name in done:
                results.append(done[name])
                continue
            t = time.perf_counter()
            job = pool.apply_async(run_one, (name,), kw)
            try:
                rec = job.get(timeout=timeout)
            except mp.TimeoutError:
                pool.terminate()
                pool = _pool(ctx)
                rec = {"model": name, "status": "timeout", "error": f"no result within {timeout:.0f}s"}
            except Exception as e:  # the worker died (memory cap, crash)
                pool.terminate()
                pool = _pool(ctx)
                rec = {"model": name, "status": "failed", "stage": "worker", "error": _first_line(e)}
            rec.setdefault("seconds", round(time.perf_counter() - t, 2))
            results.append(rec)
            print(json.dumps({k: rec.get(k) for k in ("model", "status", "groups", "speedup", "error", "reason",
                                                       "seconds")}), flush=True)
            if out_path:
                _write(out_path, results, t0, timeout, kw, earlier)
    finally:
        pool.terminate()
    return _write(out_path, results, t0, timeout, kw, earlier) if out_path else _summary(results, t0, timeout, kw)


def _summary(results, t0, timeout, kw) -> dict:
    import torch
    import torch_pruning as tp
    import torchvision

    counts = {}
    for r in results:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    graph_ok = sum(1 for r in results if (r.get("graph") or {}).get("ok") is True)
    graph_tried = sum(1 for r in results if (r.get("graph") or {}).get("ok") is not None)
    return {"machine": f"{platform.machine()} cpu, torch {torch.__version__}, torchvision {torchvision.__version__}, "
                       f"torch-pruning {tp.__version__}",
            "settings": {"timeout_s": timeout, **kw}, "seconds": round(time.perf_counter() - t0, 1),
            "counts": counts, "graph_round_trip": {"exact": graph_ok, "tried": graph_tried},
            "results": results}


def _merge(earlier: dict, results, t0) -> tuple[list, dict]:
    """The earlier sweep's records with ``results`` in place of (or after) theirs, and the run log."""
    new = {r["model"]: r for r in results}
    merged = [new.pop(r["model"], r) for r in earlier["results"]] + list(new.values())
    log = {"seconds": earlier.get("seconds"),
           "updates": earlier.get("updates", []) + [{"models": [r["model"] for r in results],
                                                      "seconds": round(time.perf_counter() - t0, 1),
                                                      "date": time.strftime("%Y-%m-%d")}]}
    return merged, log


def _write(path: Path, results, t0, timeout, kw, earlier: dict | None = None) -> dict:
    if earlier is not None:
        merged, log = _merge(earlier, results, t0)
        summary = {**_summary(merged, t0, timeout, kw), **log}
    else:
        summary = _summary(results, t0, timeout, kw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(path)
    return summary


def markdown(summary: dict) -> str:
    rows = ["| model | params | groups | NetGraph round trip | prune 2× | note |", "|---|---|---|---|---|---|"]
    for r in summary["results"]:
        g = r.get("graph") or {}
        graph = "exact" if g.get("ok") is True else ("—" if g.get("ok") is None else "fails")
        prune = f"{r['speedup']:.2f}×" if r["status"] == "pruned" else r["status"]
        note = r.get("error") or r.get("reason") or g.get("error") or ""
        rows.append(f"| {r['model']} | {r.get('params', 0) / 1e6:.1f}M | {r.get('groups', '')} | {graph} | {prune} | "
                    f"{note.replace('|', '/')[:120]} |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="model names (default: every classification constructor)")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds per model")
    ap.add_argument("--max-params", type=float, default=60e6)
    ap.add_argument("--max-graph-params", type=float, default=3e6)
    ap.add_argument("--mem-gb", type=float, default=3.0, help="address-space cap added per worker")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/torchvision_sweep-cpu.json"))
    ap.add_argument("--resume", action="store_true", help="keep finished records already in --out")
    ap.add_argument("--update", action="store_true",
                    help="re-run only the --only models, replacing their records in --out and keeping the rest")
    args = ap.parse_args(argv)
    if args.update and not args.only:
        ap.error("--update re-runs the models named by --only; give --only")
    names = args.only or classification_models()
    summary = sweep(names, args.timeout, Path(args.out), resume=args.resume, update=args.update,
                    max_params=args.max_params, max_graph_params=args.max_graph_params, mem_gb=args.mem_gb)
    print(json.dumps({k: summary[k] for k in ("counts", "graph_round_trip", "seconds")}))
    print(markdown(summary))


if __name__ == "__main__":
    main()
