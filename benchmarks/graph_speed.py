"""Speed and memory of the network <-> graph converter on CPU, one thread.

For each torchvision model (weights=None, eval mode, one 1x3x224x224 example input) a fresh
subprocess measures ``to_graph`` (tracing with torch-pruning included) and ``from_graph``: nodes, edges,
bytes of the graph's tensors, wall and CPU time (first call, and the median of ``--repeats`` warm
calls), and the peak resident-memory growth of each call (Linux VmHWM after resetting it through
/proc/self/clear_refs; tensor memory is invisible to tracemalloc). Writes
``benchmarks/results/graph_speed-cpu.json`` and prints a markdown table.

    python benchmarks/graph_speed.py [--models resnet50 vit_b_16 ...] [--repeats 3] [--size 224]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

MODELS = ["resnet50", "vit_b_16", "mobilenet_v2", "densenet121"]
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "results", "graph_speed-cpu.json")


def _status(key: str) -> int:
    """A VmXXX line of /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def _measure(fn):
    """(result, wall s, cpu s, peak RSS growth in bytes) of one call."""
    import gc

    gc.collect()
    ok = _reset_peak()
    base = _status("VmRSS")
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = _status("VmHWM") - base if ok else None
    return out, wall, cpu, peak


def run_one(name: str, repeats: int, size: int) -> dict:
    """Runs in its own process: measures one model."""
    import torch
    import torchvision

    from metaprune.graph import from_graph, to_graph

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, size, size)
    n_params = sum(p.numel() for p in model.parameters())

    g, to_wall0, to_cpu0, to_peak = _measure(lambda: to_graph(model, x, groups=True))
    graph_bytes = sum(v.numel() * v.element_size() for v in g.to_dict().values() if isinstance(v, torch.Tensor))
    m2, from_wall0, from_cpu0, from_peak = _measure(lambda: from_graph(g, model))
    exact = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values()))
    del m2
    to_w, to_c, from_w, from_c = [], [], [], []
    for _ in range(repeats):
        del g
        g, w, c, _ = _measure(lambda: to_graph(model, x, groups=True))
        to_w.append(w)
        to_c.append(c)
        m2, w, c, _ = _measure(lambda: from_graph(g, model))
        from_w.append(w)
        from_c.append(c)
        del m2
    # tracing alone (the torch-pruning forward + dependency graph), for the breakdown
    from metaprune.graph.trace import trace

    _, trace_w, trace_c, _ = _measure(lambda: trace(model, x))
    med = statistics.median
    return {
        "model": name, "params": n_params, "nodes": g.num_nodes, "edges": int(g.edge_index.shape[1]),
        "edge_features": int(g.edge_attr.numel()), "groups": len(g.groups), "graph_bytes": graph_bytes,
        "exact_round_trip": exact,
        "to_graph_s": {"first_wall": to_wall0, "first_cpu": to_cpu0, "median_wall": med(to_w), "median_cpu": med(to_c)},
        "from_graph_s": {"first_wall": from_wall0, "first_cpu": from_cpu0, "median_wall": med(from_w),
                         "median_cpu": med(from_c)},
        "trace_only_s": {"wall": trace_w, "cpu": trace_c},
        "round_trip_median_wall_s": med(to_w) + med(from_w),
        "round_trip_median_cpu_s": med(to_c) + med(from_c),
        "peak_rss_growth_bytes": {"to_graph": to_peak, "from_graph": from_peak},
        "peak_to_graph_over_graph_bytes": (to_peak / graph_bytes) if to_peak else None,
    }


def _hardware() -> dict:
    import torch

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": 1, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "load_average_at_start": load}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._one:
        print(json.dumps(run_one(args._one, args.repeats, args.size)))
        return
    results = []
    for name in args.models:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_one", name, "--repeats",
                               str(args.repeats), "--size", str(args.size)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    report = {"benchmark": "graph_speed", "device": "cpu", "input": [1, 3, args.size, args.size],
              "hardware": _hardware(), "results": results}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print("| model | nodes | edges | graph MB | to_graph s | from_graph s | round trip s (wall / cpu) "
          "| trace s | peak RSS to_graph MB (x graph) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        pk = r["peak_rss_growth_bytes"]["to_graph"]
        print(f"| {r['model']} | {r['nodes']:,} | {r['edges']:,} | {r['graph_bytes'] / 2**20:.0f} "
              f"| {r['to_graph_s']['median_wall']:.2f} | {r['from_graph_s']['median_wall']:.2f} "
              f"| {r['round_trip_median_wall_s']:.2f} / {r['round_trip_median_cpu_s']:.2f} "
              f"| {r['trace_only_s']['wall']:.2f} "
              f"| {pk / 2**20:.0f} ({r['peak_to_graph_over_graph_bytes']:.2f}x) |")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
