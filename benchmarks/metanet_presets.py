"""Size and speed of each metanetwork preset (``configs/metanet/*.yaml``) on one network's graph, CPU.

    python benchmarks/metanet_presets.py [--model resnet50] [--size 224] [--presets default small pna large]

For each preset: parameters (with encoders for the graph's node and edge types), and the wall time of one
forward pass without autograd (the chunked path for graphs of more than ``CHUNK_EDGES`` edges, as ``prune.py``
applies it) after building the graph once. Writes ``benchmarks/results/metanet_presets-cpu.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    sys.path.insert(0, str(ROOT))
    import torchvision

    from metaprune.graph import to_graph
    from metaprune.io import atomic_write_json
    from metaprune.metanet import Metanet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet50", help="torchvision model (random weights)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--presets", nargs="+", default=sorted(p.stem for p in (ROOT / "configs/metanet").glob("*.yaml")))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/metanet_presets-cpu.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = getattr(torchvision.models, args.model)(weights=None).eval()
    t0 = time.perf_counter()
    g = to_graph(model, torch.randn(1, 3, args.size, args.size))
    graph_s = time.perf_counter() - t0
    rows = []
    for name in args.presets:
        cfg = yaml.safe_load((ROOT / "configs/metanet" / f"{name}.yaml").read_text())
        torch.manual_seed(0)
        net = Metanet.for_graphs([g], **cfg).eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            net(g)
        row = {"preset": name, "hidden": cfg["hidden"], "layers": cfg["layers"], "aggr": cfg["aggr"],
               "params": sum(p.numel() for p in net.parameters()), "forward_s": time.perf_counter() - t0}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"benchmark": "metanet_presets", "model": args.model, "input": [1, 3, args.size, args.size],
              "nodes": int(g.x.shape[0]), "edges": int(g.edge_index.shape[1]), "to_graph_s": graph_s,
              "threads": args.threads, "machine": f"{platform.machine()} {platform.processor()}".strip(),
              "torch": torch.__version__, "presets": rows}
    atomic_write_json(Path(args.out), result)
    print("| preset | hidden × layers | aggregators | parameters | forward (s) |\n|---|---|---|---|---|")
    for r in rows:
        aggr = r["aggr"] if isinstance(r["aggr"], str) else ", ".join(r["aggr"])
        print(f"| {r['preset']} | {r['hidden']} × {r['layers']} | {aggr} | {r['params']:,} | {r['forward_s']:.1f} |")
    return result


if __name__ == "__main__":
    main()
