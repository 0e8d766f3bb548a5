"""Coverage beside torch-pruning: which models each tool prunes to 2x MACs with working outputs.

Suites (random init, ``num_classes=10``, batch 1, no downloads):
  timm         every ``timm.list_models()`` model with at most ``--max-params`` parameters (counted on the meta
               device), at 64x64 (or with ``img_size=64``, or at its default input size when 64x64 does not run)
  hf           tiny Hugging Face BERT (sequence classification), ViT (image classification), GPT-2 (LM head)
               built from their Config classes
  torchvision  the classification constructors of ``benchmarks/torchvision_sweep.py`` under the same cap

Per model, each tool runs in a worker process with a time limit (``--timeout``; status ``timeout`` past it):
  metaprune      ``metaprune.prune.prune(model, x, target_speedup=2.0)`` (output layer found and protected,
                 attention heads found, all automatic); then the NetGraph round trip ``to_graph`` -> ``from_graph``
                 of the pruned model (of the unpruned one when pruning fails): the rebuilt model's outputs equal
  torch_pruning  ``tp.pruner.MetaPruner`` with ``GroupMagnitudeImportance(p=2)``, local (per-layer) ratios,
                 ``iterative_steps=30`` up to ``pruning_ratio=0.9``, stepping until MACs halve; the layers whose
                 output width is the model's output width ignored and ``num_heads`` given for every attention
                 (timm ``qkv``, HF ``query``/``key``/``value``, GPT-2 ``c_attn``), head attributes updated after
                 each step as torch-pruning's examples do
Both measure MACs with ``metaprune.cost.macs_and_params``. ``ok`` means the pruned model's outputs have the
original shapes and are finite; ``wrong_output`` is a prune that returned without error and broke that (silent).
Records append to ``--records`` (JSON lines; a rerun skips finished model/tool pairs), the aggregate goes to
``--out``::

    nice -n 10 python benchmarks/coverage.py [--suites timm hf torchvision] [--max-params 5e6] [--timeout 120]
"""
from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import platform
import re
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOOLS = ("metaprune", "torch_pruning")
SIZE = 64
NUM_CLASSES = 10
HF_MODELS = ("bert", "vit", "gpt2")


# ------------------------------------------------------------------ models
def _tv_sweep():
    """``benchmarks/torchvision_sweep.py`` (its constructor arguments and input sizes), loaded by path."""
    import importlib.util
    import sys

    if "torchvision_sweep" not in sys.modules:
        spec = importlib.util.spec_from_file_location("torchvision_sweep", ROOT / "benchmarks" / "torchvision_sweep.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules["torchvision_sweep"] = mod
    return sys.modules["torchvision_sweep"]


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"[:limit]


def _hf(name: str):
    import torch
    import transformers as tf

    if name == "bert":
        cfg = tf.BertConfig(vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128, max_position_embeddings=32, num_labels=3)
        return tf.BertForSequenceClassification(cfg), torch.randint(0, 100, (1, 16))
    if name == "vit":
        cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, num_labels=NUM_CLASSES)
        return tf.ViTForImageClassification(cfg), torch.randn(1, 3, 32, 32)
    if name == "gpt2":
        cfg = tf.GPT2Config(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=4, use_cache=False,
                            bos_token_id=0, eos_token_id=0)
        return tf.GPT2LMHeadModel(cfg), torch.randint(0, 100, (1, 16))
    raise ValueError(f"unknown Hugging Face model {name!r}; choose from {HF_MODELS}")


def _timm_attempts(name: str):
    """(constructor kwargs, input size) to try, in order: 64x64, 64x64 with ``img_size=64``, the default size."""
    import timm

    yield {}, SIZE
    yield {"img_size": SIZE}, SIZE
    cfg = timm.models.get_pretrained_cfg(name) if hasattr(timm.models, "get_pretrained_cfg") else None
    size = (getattr(cfg, "input_size", None) or (3, 224, 224))[-1] if cfg is not None else 224
    if size != SIZE:
        yield {}, size


def build(suite: str, name: str):
    """The model (eval mode, seed 0) and its example input; the first setting whose forward runs."""
    import torch

    if suite == "hf":
        torch.manual_seed(0)
        model, x = _hf(name)
        return model.eval(), x, {}
    if suite == "torchvision":
        import torchvision.models as tvm

        tv = _tv_sweep()
        args = {"num_classes": NUM_CLASSES, **tv.EXTRA_ARGS.get(name, {})}
        torch.manual_seed(0)
        size = tv.INPUT_SIZE.get(name, SIZE)
        return tvm.get_model(name, weights=None, **args).eval(), torch.randn(1, 3, size, size), args
    if suite != "timm":
        raise ValueError(f"unknown suite {suite!r}; choose from timm, hf, torchvision")
    import timm

    err = None
    for kw, size in _timm_attempts(name):
        torch.manual_seed(0)
        try:
            model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kw).eval()
            x = torch.randn(1, 3, size, size)
            with torch.no_grad():
                model(x)
            return model, x, kw
        except Exception as e:  # the next setting, or the first error
            err = err or e
    raise err


def count_params(suite: str, name: str) -> int:
    """Parameters on the meta device (no memory, no init); constructors that compute on tensors build for real."""
    import torch

    try:
        with torch.device("meta"):
            model = _construct(suite, name)
    except Exception:
        model = _construct(suite, name)
    return sum(p.numel() for p in model.parameters())


def _construct(suite, name):
    if suite == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)
    if suite == "torchvision":
        import torchvision.models as tvm

        return tvm.get_model(name, weights=None, num_classes=NUM_CLASSES, **_tv_sweep().EXTRA_ARGS.get(name, {}))
    return _hf(name)[0]


def model_names(suite: str) -> list[str]:
    if suite == "timm":
        import timm

        return sorted(timm.list_models())
    if suite == "torchvision":
        return _tv_sweep().classification_models()
    return list(HF_MODELS)


# ------------------------------------------------------------------ checks
def _forward(model, x) -> list:
    """The output tensors of a forward (as the tracer and the output-shape check see them)."""
    import torch

    from metaprune.depgraph import output_tensors

    with torch.no_grad():
        return output_tensors(model(x))


def output_check(model, x, base_shapes) -> dict:
    """Same output shapes as before pruning and a finite forward."""
    import torch

    try:
        outs = _forward(model, x)
    except Exception as e:
        return {"ok": False, "error": f"forward after pruning fails ({_first_line(e)})"}
    shapes = [list(t.shape) for t in outs]
    finite = all(bool(torch.isfinite(t).all()) for t in outs if t.is_floating_point())
    ok = shapes == base_shapes and finite
    rec = {"ok": ok, "shapes_equal": shapes == base_shapes, "finite": finite}
    if shapes != base_shapes:
        rec["shapes"] = shapes
    return rec


def graph_round_trip(model, x) -> dict:
    """``to_graph`` -> ``from_graph`` into a copy: the rebuilt model's outputs equal the model's."""
    import torch

    from metaprune.graph import from_graph, to_graph

    try:
        g = to_graph(model, x)
        back = from_graph(g, copy.deepcopy(model)).eval()
        a, b = _forward(model, x), _forward(back, x)
        equal = len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))
        rec = {"ok": equal, "nodes": int(g.num_nodes), "edges": int(g.edge_index.shape[1])}
        if not equal:
            rec["error"] = "the rebuilt model's outputs differ"
        return rec
    except Exception as e:
        return {"ok": False, "error": _first_line(e)}


# ------------------------------------------------------------------ the two pruners
def run_metaprune(model, x) -> dict:
    from metaprune.prune import prune

    res = prune(model, x, target_speedup=2.0)
    return {"macs_ratio": round(res.base_macs / max(res.pruned_macs, 1), 3), "base_macs": res.base_macs,
            "pruned_macs": res.pruned_macs, "protected": res.protected[:5]}


_PROJ = {"qkv": 3, "c_attn": 3, "query": 1, "q_proj": 1}  # attention input projection -> q/k/v fused in it


def _attention_projections(model):
    """(attention module, projection attribute, [projection modules]) for the attentions torch-pruning's examples
    name: timm's fused ``qkv``, Hugging Face's ``query``/``key``/``value`` (or ``q_proj``...), GPT-2's ``c_attn``."""
    for m in model.modules():
        heads = next((getattr(m, a) for a in ("num_heads", "num_attention_heads", "n_head")
                      if isinstance(getattr(m, a, None), int)), None)
        if heads is None:
            continue
        for attr in _PROJ:
            proj = getattr(m, attr, None)
            if proj is not None and hasattr(proj, "weight"):
                siblings = [proj]
                if attr == "query":
                    siblings += [getattr(m, "key", None), getattr(m, "value", None)]
                if attr == "q_proj":
                    siblings += [getattr(m, "k_proj", None), getattr(m, "v_proj", None)]
                yield m, attr, [s for s in siblings if s is not None], heads
                break


def _out_width(proj) -> int:
    return proj.out_features if hasattr(proj, "out_features") else proj.weight.shape[-1]  # GPT-2 Conv1D: [in, out]


def _update_heads(model, pruner) -> None:
    """After a torch-pruning step: head count and head size from the pruned projections (its examples' recipe)."""
    for m, attr, projs, _ in list(_attention_projections(model)):
        h = pruner.num_heads.get(projs[0])
        if h is None:
            continue
        width = _out_width(projs[0])
        dim = width // (_PROJ[attr] * h)
        for a in ("num_heads", "num_attention_heads", "n_head"):
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, h)
        for a in ("head_dim", "attention_head_size"):
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, dim)
        for a in ("all_head_size", "attn_dim"):
            if isinstance(getattr(m, a, None), int):
                setattr(m, a, h * dim)


def run_torch_pruning(model, x, base_shapes) -> dict:
    import torch
    import torch_pruning as tp
    from torch import nn

    from metaprune.cost import macs_and_params

    width = base_shapes[0][-1] if base_shapes else None
    # torch-pruning's examples: the classifier (timm's ``get_classifier()``, a Linear of the output's width, else
    # the last conv of that width: SqueezeNet's 1x1 conv head)
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == width]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == width]
    if not ignored and convs:
        ignored.append(convs[-1])
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, nn.Module) and any(p.numel() for p in head.parameters()) and head not in ignored:
        ignored.append(head)
    num_heads = {p: h for _, _, projs, h in _attention_projections(model) for p in projs}
    base_macs, _ = macs_and_params(model, x)
    steps = 30
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.9, iterative_steps=steps, ignored_layers=ignored,
                                  num_heads=num_heads, global_pruning=False)
    macs = base_macs
    for _ in range(steps):
        pruner.step()
        _update_heads(model, pruner)
        with torch.no_grad():
            macs, _ = macs_and_params(model, x)
        if base_macs / max(macs, 1) >= 2.0:
            break
    ratio = base_macs / max(macs, 1)
    if ratio < 1.95:
        raise ValueError(f"torch-pruning reached only {ratio:.2f}x MACs after {steps} steps up to pruning_ratio 0.9")
    return {"macs_ratio": round(ratio, 3), "base_macs": int(base_macs), "pruned_macs": int(macs),
            "ignored": len(ignored), "attention_modules": len(num_heads)}


def run_one(suite: str, name: str, tool: str, threads: int | None = 1, time_limit: float | None = None) -> dict:
    """One model through one tool; returns a record (never raises for a model's own failure).

    ``status``: ``ok`` (pruned, outputs intact), ``failed`` (raised; ``error`` is its first line, ``stage`` where),
    ``wrong_output`` (returned, but the output shapes changed or the forward is not finite: silent)."""
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    if threads:
        torch.set_num_threads(threads)
    if time_limit:
        from metaprune import depgraph

        depgraph.TRACE_TIME_LIMIT_S = time_limit  # metaprune's own bound, below the worker's
    rec = {"suite": suite, "model": name, "tool": tool}
    t0 = time.perf_counter()
    try:
        model, x, kw = build(suite, name)
        rec.update(input=list(x.shape), args=kw, params=sum(p.numel() for p in model.parameters()))
        base_shapes = [list(t.shape) for t in _forward(model, x)]
    except Exception as e:
        rec.update(status="failed", stage="build", error=_first_line(e), seconds=round(time.perf_counter() - t0, 2))
        return rec
    try:
        t1 = time.perf_counter()
        rec.update(run_metaprune(model, x) if tool == "metaprune" else run_torch_pruning(model, x, base_shapes))
        rec["prune_seconds"] = round(time.perf_counter() - t1, 2)
        check = output_check(model, x, base_shapes)
        rec["output"] = check
        rec["status"] = "ok" if check["ok"] else "wrong_output"
    except Exception as e:
        rec.update(status="failed", stage="prune", error=_first_line(e),
                   traceback_tail=[line.strip() for line in traceback.format_exc().strip().splitlines()[-4:]])
    if tool == "metaprune":  # the pruned model when pruning worked, else the model as built (it was restored)
        rec["graph"] = {"of": "pruned" if rec["status"] == "ok" else "unpruned", **graph_round_trip(model, x)}
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    return rec


# ------------------------------------------------------------------ failure patterns
# (regex on both tools' errors and traceback tails, pattern); the first match names the pattern
PATTERNS = [
    (r"regroups channels|shuffle|update_reshape_index_mapping", "channel shuffle (a reshape regroups channels)"),
    (r"relative_position|rel_pos|bias_table|attention_bias|bias_idxs",
     "parameter used by indexing (an attention bias table read through an index)"),
    (r"LayerScale|layer_scale|\.ls\d|\.gamma\b",
     "layer scale (a per-channel scale parameter on a residual branch with no pruning rule)"),
    (r"slice of the channels|split of the channels|concatenation of channels|unbind|\bsplit\b|chunk",
     "channel split (channels are split or sliced and concatenated again)"),
    (r"Attn|Attention|attention|num_heads|head",
     "attention (the head count or head size does not follow the pruned projections)"),
    (r"running_mean|running_var", "normalisation statistics left at the old width"),
    (r"BlurPool", "a fixed filter buffer at the old width (BlurPool2d's blur kernel is a buffer, not cut)"),
    (r"index \d+ is out of bounds", "a channel index past a layer's width (a grouped conv multiplying the channels)"),
    (r"cannot prune layer|no structural pruning rule|Conv1D|RMSNorm", "a layer type with no pruning rule"),
    (r"took longer than|no result within", "tracing or group enumeration runs past the time limit"),
    (r"reached only", "the target is out of reach"),
    (r"shape|size mismatch|must match|channels", "a shape no longer matches after pruning"),
]
_LAYER = re.compile(r"(?:in layer|after layer|cannot prune layer\(s\)) ([\w.]+ \([\w.]+\))")


def classify(*records: dict) -> str:
    """One sentence naming the pattern and the layer (as the tools' errors name it) of a model's failure."""
    text = " ".join(" ".join([r.get("error") or ""] + r.get("traceback_tail", [])) for r in records if r)
    pattern = next((p for rx, p in PATTERNS if re.search(rx, text)), "unclassified")
    layer = _LAYER.search(text)
    where = f"at {layer.group(1)}" if layer else "(no layer named by either tool)"
    return f"{pattern[0].upper()}{pattern[1:]} {where}."


# ------------------------------------------------------------------ the run
def _cap_memory(limit_gb: float | None) -> None:
    if limit_gb:
        _tv_sweep()._cap_memory(limit_gb)


def _worker_init(limit_gb):
    # the libraries first: the cap is added to the address space they map (CUDA libraries map gigabytes)
    import timm  # noqa: F401
    import torch_pruning  # noqa: F401
    import torchvision  # noqa: F401
    import transformers  # noqa: F401

    import metaprune.graph  # noqa: F401
    import metaprune.prune  # noqa: F401

    _cap_memory(limit_gb)


def _ready() -> bool:
    return True


def _pool(ctx, mem_gb):
    """One worker, kept until a model times out or kills it; returned once its imports are done, so a model's time
    limit does not count the start."""
    pool = ctx.Pool(1, initializer=_worker_init, initargs=(mem_gb,))
    pool.apply(_ready)
    return pool


def load_records(path: Path) -> dict:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                done[(r["suite"], r["model"], r["tool"])] = r
    return done


def select(suite: str, max_params: float, cache: Path, sample: int | None = None) -> tuple[list[str], dict]:
    """Names under the cap and every counted name's parameter count (or build error), cached in ``cache``.
    ``sample=k`` keeps every k-th name of the sorted list before counting (deterministic)."""
    counts = json.loads(cache.read_text()) if cache.exists() else {}
    names = model_names(suite)[::sample or 1]
    todo = [n for n in names if n not in counts.get(suite, {})]
    if todo:
        import warnings

        warnings.filterwarnings("ignore")
        got = counts.setdefault(suite, {})
        for n in todo:
            try:
                got[n] = count_params(suite, n)
            except Exception as e:
                got[n] = _first_line(e, 200)
        from metaprune.io import atomic_write_json

        atomic_write_json(cache, counts)
    table = counts.get(suite, {})
    return [n for n in names if isinstance(table.get(n), int) and table[n] <= max_params], table


def sweep(jobs: list[tuple[str, str]], records: Path, timeout: float, mem_gb: float | None = 3.0) -> dict:
    """Run every (suite, model) through both tools, skipping pairs already in ``records``."""
    done = load_records(records)
    ctx = mp.get_context("spawn")
    pool = None  # started at the first model to run
    try:
        for suite, name in jobs:
            for tool in TOOLS:
                if (suite, name, tool) in done:
                    continue
                pool = pool or _pool(ctx, mem_gb)
                t = time.perf_counter()
                job = pool.apply_async(run_one, (suite, name, tool), {"time_limit": max(timeout - 15, 5)})
                try:
                    rec = job.get(timeout=timeout)
                except mp.TimeoutError:
                    pool.terminate()
                    pool = _pool(ctx, mem_gb)
                    rec = {"suite": suite, "model": name, "tool": tool, "status": "timeout",
                           "error": f"no result within {timeout:.0f} s"}
                except Exception as e:  # the worker died (memory cap, crash)
                    pool.terminate()
                    pool = _pool(ctx, mem_gb)
                    rec = {"suite": suite, "model": name, "tool": tool, "status": "failed", "stage": "worker",
                           "error": _first_line(e)}
                rec.setdefault("seconds", round(time.perf_counter() - t, 2))
                if re.search(r"MemoryError|can't allocate memory", rec.get("error") or ""):
                    pool.terminate()  # the worker reached its memory cap: the next model gets a fresh one
                    pool = None
                done[(suite, name, tool)] = rec
                with records.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(json.dumps({k: rec.get(k) for k in ("suite", "model", "tool", "status", "macs_ratio", "error",
                                                           "seconds")}), flush=True)
    finally:
        if pool is not None:
            pool.terminate()
    return done


def aggregate(done: dict, selected: dict, settings: dict) -> dict:
    """Per model both tools' outcomes; counts per suite (both ok / metaprune only / torch-pruning only / both fail)."""
    import timm
    import torch
    import torch_pruning as tp
    import transformers

    suites = {}
    for suite, names in selected.items():
        rows, counts = [], {"both_ok": 0, "metaprune_only": 0, "torch_pruning_only": 0, "both_fail": 0}
        silent = {t: [] for t in TOOLS}
        graph = {"equal": 0, "tried": 0}
        for name in names:
            m, t = done.get((suite, name, "metaprune")), done.get((suite, name, "torch_pruning"))
            if m is None or t is None:
                continue
            row = {"model": name, "params": m.get("params"), "input": m.get("input")}
            for tool, r in (("metaprune", m), ("torch_pruning", t)):
                row[tool] = {k: r[k] for k in ("status", "macs_ratio", "error", "stage", "seconds") if k in r}
                if r["status"] == "wrong_output":
                    silent[tool].append(name)
            if "graph" in m:
                row["graph"] = m["graph"]
                graph["tried"] += 1
                graph["equal"] += bool(m["graph"].get("ok"))
            a, b = m["status"] == "ok", t["status"] == "ok"
            key = "both_ok" if a and b else "metaprune_only" if a else "torch_pruning_only" if b else "both_fail"
            counts[key] += 1
            if key == "both_fail":
                row["why"] = classify(m, t)
            elif not a:
                row["why"] = classify(m)
            rows.append(row)
        n = len(rows)
        suites[suite] = {"models": n, "counts": counts,
                         "metaprune_ok": counts["both_ok"] + counts["metaprune_only"],
                         "metaprune_ok_pct": round(100 * (counts["both_ok"] + counts["metaprune_only"]) / max(n, 1),
                                                   1),
                         "torch_pruning_ok": counts["both_ok"] + counts["torch_pruning_only"],
                         "silent_wrong_outputs": silent, "graph_round_trip": graph, "results": rows}
    return {"machine": f"{platform.machine()} cpu, torch {torch.__version__}, torch-pruning {tp.__version__}, "
                       f"timm {timm.__version__}, transformers {transformers.__version__}",
            "date": time.strftime("%Y-%m-%d"), "settings": settings, "suites": suites}


def markdown(summary: dict) -> str:
    lines = [("| suite | models | both ok | metaprune only | torch-pruning only | both fail | metaprune ok | "
              "silent wrong (metaprune / torch-pruning) | NetGraph round trip |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for suite, s in summary["suites"].items():
        c = s["counts"]
        lines.append(f"| {suite} | {s['models']} | {c['both_ok']} | {c['metaprune_only']} | "
                     f"{c['torch_pruning_only']} | {c['both_fail']} | {s['metaprune_ok_pct']}% | {len(s['silent_wrong_outputs']['metaprune'])} / "
                     f"{len(s['silent_wrong_outputs']['torch_pruning'])} | {s['graph_round_trip']['equal']}/"
                     f"{s['graph_round_trip']['tried']} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suites", nargs="+", default=["timm", "hf", "torchvision"])
    ap.add_argument("--only", nargs="*", help="model names (default: every one of the suite under the cap)")
    ap.add_argument("--max-params", type=float, default=5e6)
    ap.add_argument("--sample", type=int, default=None,
                    help="timm: keep every k-th name of the sorted list, then apply the cap (deterministic)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per model and tool")
    ap.add_argument("--mem-gb", type=float, default=3.0, help="address-space cap added per worker")
    ap.add_argument("--reverse", action="store_true",
                    help="run each suite's models last to first (a second run sharing --records meets the first)")
    ap.add_argument("--records", default=str(RESULTS / "coverage-records.jsonl"))
    ap.add_argument("--params-cache", default=str(RESULTS / "coverage-params.json"))
    ap.add_argument("--out", default=str(RESULTS / "coverage.json"))
    args = ap.parse_args(argv)
    selected, listed = {}, {}
    for suite in args.suites:  # one suite after the other: a suite's records are complete before the next counts
        sample = args.sample if suite == "timm" else None
        names, table = select(suite, args.max_params, Path(args.params_cache), sample)
        if args.only:
            names = [n for n in names if n in args.only]
        selected[suite] = names
        counted = model_names(suite)[::sample or 1]
        listed[suite] = {"listed": len(model_names(suite)), "counted": len(counted), "under_cap": len(names),
                         "not_built": sorted(n for n in counted if not isinstance(table.get(n), int))}
        jobs = [(suite, n) for n in names]
        sweep(jobs[::-1] if args.reverse else jobs, Path(args.records), args.timeout, args.mem_gb)
    done = load_records(Path(args.records))  # with what a second run on the same records finished meanwhile
    settings = {"max_params": args.max_params, "timm_sample_every": args.sample, "timeout_s": args.timeout,
                "input": f"{SIZE}x{SIZE} (HF: 16 tokens, ViT 32x32)", "target_speedup": 2.0, "threads": 1,
                "selection": listed}
    summary = aggregate(done, selected, settings)
    from metaprune.io import atomic_write_json

    atomic_write_json(Path(args.out), summary)
    print(markdown(summary))


if __name__ == "__main__":
    main()
