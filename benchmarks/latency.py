"""MACs target vs measured-latency target: does the pruned network really run faster?

    python benchmarks/latency.py [--device cpu] [--batch 4] [--runs 8] [--targets 1.5 2 3]
                                 [--models resnet50 mobilenet_v2 densenet121 vit_b_16] [--merge] [--tag repeat]

For each torchvision model (random init, 224x224) and each target, two routes prune the same network:
  macs     ``prune(target_speedup=s)``                     — channel counts wherever the criterion puts them
  latency  ``prune_to_latency(target_latency_speedup=s)``  — round_to measured for the device, candidates timed
Both pruned models are then timed against the unpruned one *alternately* (paired runs, so background load
hits both alike) and the measured latency ratio is recorded beside the MACs ratio, with ``os.getloadavg()``
before and after every timing (other jobs may share the machine). Writes
``benchmarks/results/latency-<device>.json`` after every row (``--merge`` keeps the rows of models not
re-run, if batch, dtype, input and device agree) and a PNG of MACs ratio vs latency ratio.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaprune.hardware import default_round_to  # noqa: E402
from metaprune.io import atomic_write_json  # noqa: E402
from metaprune.metrics import device_name, macs_and_params  # noqa: E402
from metaprune.prune import prune  # noqa: E402
from metaprune.prune.latency import paired_speedup, prune_to_latency  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SAME_RUN = ("device", "dtype", "batch_size", "input", "runs")  # rows may be merged only if these agree


class LoggedTimer:
    """:func:`paired_speedup` that records the load average before and after each call (and, given
    ``example_inputs``, the candidate's MACs ratio, so an unreachable search still says what it tried)."""

    def __init__(self, example_inputs=None):
        self.calls, self.x, self.base_macs = [], example_inputs, None

    def __call__(self, base, cand, input_shape, batch_size, device, dtype, runs):
        before = _load()
        b, c, r = paired_speedup(base, cand, input_shape, batch_size, device, dtype, runs)
        call = {"base_ms": b, "pruned_ms": c, "latency_speedup": r, "loadavg_before": before, "loadavg_after": _load()}
        if self.x is not None:
            x = self.x.to(next(cand.parameters()).device)
            self.base_macs = self.base_macs or macs_and_params(base, x)[0]
            call["macs_speedup"] = self.base_macs / macs_and_params(cand, x)[0]
        self.calls.append(call)
        return b, c, r


def macs_route(base, x, s, args, dtype) -> dict:
    m = copy.deepcopy(base)
    t0 = time.perf_counter()
    r = prune(m, x, target_speedup=s)
    timer = LoggedTimer()
    timer(base, m, x.shape[1:], args.batch, args.device, dtype, args.runs)
    return {"macs_speedup": r.speedup, **timer.calls[0], "seconds": time.perf_counter() - t0}


def latency_route(base, x, s, args, dtype, round_to) -> dict:
    m = copy.deepcopy(base)
    t0 = time.perf_counter()
    search_timer = LoggedTimer(x)
    try:
        r, search = prune_to_latency(m, x, s, batch_size=args.batch, device=args.device, dtype=dtype,
                                     runs=args.runs, round_to=round_to, timer=search_timer)
    except ValueError as e:  # recorded, not hidden: the device cannot give this much
        return {"unreachable": str(e), "trials": search_timer.calls, "round_to": round_to,
                "seconds": time.perf_counter() - t0}
    # the search's timer calls are its trials in order, then the final check of the chosen model
    trials = [{**t, **c} for t, c in zip(search["trials"], search_timer.calls)]
    timer = LoggedTimer()  # an independent re-measurement, same as the MACs route gets
    timer(base, m, x.shape[1:], args.batch, args.device, dtype, args.runs)
    return {"macs_speedup": r.speedup, **timer.calls[0], "round_to": round_to,
            "search_latency_speedup": search["latency_speedup"], "trials": trials,
            "seconds": time.perf_counter() - t0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--runs", type=int, default=8, help="timed forward passes per model per paired measurement")
    p.add_argument("--targets", type=float, nargs="+", default=[1.5, 2.0, 3.0])
    p.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "densenet121", "vit_b_16"])
    p.add_argument("--merge", action="store_true", help="keep rows of other models from the existing JSON")
    p.add_argument("--tag", default="", help="file name suffix, e.g. a repeat: latency-cpu-<tag>.json")
    args = p.parse_args(argv)
    unknown = [m for m in args.models if not hasattr(torchvision.models, m)]
    if unknown:
        p.error(f"--models: not torchvision models: {unknown}")
    dtype = getattr(torch, args.dtype)
    tag = "cpu" if torch.device(args.device).type == "cpu" else "gpu"
    path = RESULTS / f"latency-{tag}{'-' + args.tag if args.tag else ''}.json"
    t_start = time.perf_counter()
    round_to = default_round_to(args.device, dtype)
    out = {"device": device_name(args.device), "dtype": args.dtype, "batch_size": args.batch,
           "input": [3, args.size, args.size], "runs": args.runs, "threads": torch.get_num_threads(),
           "torch": torch.__version__, "torchvision": torchvision.__version__, "machine": platform.machine(),
           "processor": _cpu_model(), "date": time.strftime("%Y-%m-%d"), "round_to": round_to,
           "command": " ".join(["python", "benchmarks/latency.py", *(sys.argv[1:] if argv is None else argv)]),
           "loadavg_start": _load(), "rows": []}
    if args.merge and path.exists():
        old = json.loads(path.read_text())
        differ = [k for k in SAME_RUN if old.get(k) != out[k]]
        if differ:
            sys.exit(f"error: --merge: {path} was measured with different {differ}; re-run those models instead")
        out["rows"] = [r for r in old["rows"] if r["model"] not in args.models]
    x = torch.randn(1, 3, args.size, args.size)
    for name in args.models:
        base = getattr(torchvision.models, name)(weights=None).eval()
        for s in args.targets:
            row = {"model": name, "target": s, "macs_route": macs_route(base, x, s, args, dtype),
                   "latency_route": latency_route(base, x, s, args, dtype, round_to)}
            out["rows"].append(row)
            out.update(loadavg_end=_load(), wall_s=time.perf_counter() - t_start)
            atomic_write_json(path, out)  # after every row: a long run that is stopped keeps what it measured
            print(_line(row), flush=True)
    plot(out["rows"], path.with_suffix(".png"), f"{out['device']}, {args.dtype}, batch {args.batch}")


def _load() -> list[float]:
    """1/5/15-minute load averages: how busy the shared machine was around a timing."""
    return [round(v, 2) for v in os.getloadavg()]


def _cpu_model() -> str:
    try:
        return next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def _line(row) -> str:
    a, b = row["macs_route"], row["latency_route"]
    lat = (f"{b['macs_speedup']:.2f}x MACs -> {b['latency_speedup']:.2f}x time" if "macs_speedup" in b
           else f"unreachable: {b['unreachable']}")
    return (f"{row['model']} target {row['target']}x: MACs route {a['macs_speedup']:.2f}x MACs -> "
            f"{a['latency_speedup']:.2f}x time | latency route {lat}")


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for i, name in enumerate(dict.fromkeys(r["model"] for r in rows)):
        mine = [r for r in rows if r["model"] == name]
        for route, style, label in (("macs_route", "o--", "MACs target"), ("latency_route", "s-", "latency target")):
            sel = [r[route] for r in mine if "macs_speedup" in r[route]]
            ax.plot([r["macs_speedup"] for r in sel], [r["latency_speedup"] for r in sel], style, color=f"C{i}",
                    label=f"{name} ({label})")
    lim = max(r[k].get("macs_speedup", 1) for r in rows for k in ("macs_route", "latency_route")) + 0.5
    ax.plot([1, lim], [1, lim], ":", color="0.5", label="time = MACs")
    ax.set(xlabel="MACs ratio (base / pruned)", ylabel="measured latency ratio (base / pruned)", title=title,
           xscale="log", yscale="log")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        axis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
