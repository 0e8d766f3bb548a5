"""Wall time and peak memory of every pipeline stage on torchvision networks (CPU; GPU when present).

    python benchmarks/speed.py [--models resnet50 mobilenet_v2 densenet121 vit_b_16] [--threads 2]

Stages, each timed on its own: ``to_graph`` (tracing included), ``metanet`` (forward of the shipped
metanetwork's architecture, untrained weights are fine for timing), ``from_graph``, ``grouping``
(DepGraph groups), ``reach_target`` (search + prune to 2x MACs). Peak memory is the process's peak RSS
growth during the stage (Linux ``VmHWM``, reset before each stage). Writes
``benchmarks/results/speed-<device>.json``.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from metaprune.graph import from_graph, to_graph  # noqa: E402
from metaprune.io import atomic_write_json  # noqa: E402
from metaprune.metanet import Metanet  # noqa: E402
from metaprune.metrics import device_name  # noqa: E402
from metaprune.prune import groups, prune  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _rss_mb(field: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def stage(fn):
    """Run ``fn`` and return (result, seconds, peak RSS growth in MB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter
    except OSError:
        pass
    before = _rss_mb("VmRSS:")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    return out, secs, max(0.0, _rss_mb("VmHWM:") - before)


def run_model(name: str, metanet_cfg: dict, device) -> dict:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    rec = {}
    g, s, m = stage(lambda: to_graph(model, x))
    rec["to_graph"] = {"seconds": s, "peak_mb": m, "nodes": int(g.num_nodes), "edges": int(g.edge_index.shape[1])}
    net = Metanet.for_graphs([g], **metanet_cfg).to(device).eval()
    # edge states dominate: without autograd the metanetwork runs chunk by chunk and holds one [E, hidden]
    # float tensor plus the new edge features; skip what cannot fit rather than swap/OOM
    need_gb = rec["to_graph"]["edges"] * (metanet_cfg["hidden"] + 2) * 4 * 1.25 / 2**30
    have_gb = (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
               else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) / 2**30
    if need_gb > 0.6 * have_gb:
        rec["metanet"] = {"skipped": f"needs ~{need_gb:.0f} GB of edge states, {have_gb:.0f} GB on {device}"}
        g2 = g
    else:
        gd = g.to(device)
        with torch.no_grad():
            g2, s, m = stage(lambda: net.transform(gd))
        rec["metanet"] = {"seconds": s, "peak_mb": m, "params": sum(p.numel() for p in net.parameters()),
                          "device": str(device)}
        del gd
    _, s, m = stage(lambda: from_graph(g2.to("cpu"), model))
    rec["from_graph"] = {"seconds": s, "peak_mb": m}
    g = g2 = None  # free both graphs before grouping
    grps, s, m = stage(lambda: groups(model, x))
    rec["grouping"] = {"seconds": s, "peak_mb": m, "groups": len(grps)}
    res, s, m = stage(lambda: prune(copy.deepcopy(model), x, target_speedup=2.0))
    rec["reach_target"] = {"seconds": s, "peak_mb": m, "speedup": res.speedup}
    return rec


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2", "densenet121", "vit_b_16"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--layers", type=int, default=2)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = {"device": device_name(device), "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "loadavg": os.getloadavg(),
           "date": time.strftime("%Y-%m-%d"), "metanet": {"hidden": args.hidden, "layers": args.layers},
           "models": {}}
    for name in args.models:
        out["models"][name] = run_model(name, {"hidden": args.hidden, "layers": args.layers}, device)
        r = out["models"][name]
        print(name, " | ".join(f"{k} {v['seconds']:.2f}s {v['peak_mb']:.0f}MB" if "seconds" in v else f"{k} skipped"
                               for k, v in r.items()), flush=True)
    atomic_write_json(RESULTS / f"speed-{'gpu' if device.type == 'cuda' else 'cpu'}.json", out)


if __name__ == "__main__":
    main()
