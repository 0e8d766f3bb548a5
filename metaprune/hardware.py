"""Channel multiples the device's kernels like, measured rather than guessed.

Pruning to odd channel counts can make a network slower than its MACs suggest: vectorised CPU kernels and
GPU tensor cores run at full speed only on channel counts that are multiples of their tile width. We time
a 3x3 convolution across consecutive widths on the current device and dtype, and take as ``round_to`` the
smallest multiple whose widths beat their neighbours as much as the best multiple's do (1 when no multiple
does). Results are cached per device.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn

from .io import atomic_write_json
from .metrics import device_name, sync

CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
CACHE = Path(os.environ.get("METAPRUNE_CACHE", Path.home() / ".cache" / "metaprune")) / "round_to.json"


def _time_conv(c: int, device, dtype, batch: int, size: int, runs: int) -> float:
    conv = nn.Conv2d(c, c, 3, padding=1, bias=False).to(device=device, dtype=dtype).eval()
    x = torch.randn(batch, c, size, size, device=device, dtype=dtype)
    if device.type == "cuda":
        conv, x = conv.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    times = []
    with torch.no_grad():
        for i in range(runs + 2):
            sync(device)
            t0 = time.perf_counter()
            conv(x)
            sync(device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def channel_throughput(device="cpu", dtype=torch.float32, widths=range(88, 137), batch=None, size=None, runs=5,
                       passes=3, seed=0):
    """Throughput (MACs per second) of a c->c 3x3 conv for each width ``c`` on ``device``/``dtype``.

    Widths are visited in a new random order on each pass and the median over passes is kept, so clock
    ramps and background load do not masquerade as a width effect.
    """
    device = torch.device(device)
    batch = batch or (8 if device.type == "cpu" else 64)
    size = size or (16 if device.type == "cpu" else 28)
    widths = list(widths)
    g = torch.Generator().manual_seed(seed)
    samples: dict[int, list[float]] = {c: [] for c in widths}
    for _ in range(passes):
        for i in torch.randperm(len(widths), generator=g).tolist():
            c = widths[i]
            samples[c].append(batch * size * size * c * c * 9 / _time_conv(c, device, dtype, batch, size, runs))
    return {c: statistics.median(v) for c, v in samples.items()}


def best_multiple(throughput: dict[int, float], tolerance: float = 0.05, candidates=CANDIDATES) -> int:
    """Smallest multiple whose widths run, on average, within ``tolerance`` of the best multiple's advantage
    over their immediate neighbours (width c against c-1 and c+1). Comparing neighbours separates a real
    multiple effect (tiles, vector lanes) from smooth trends and algorithm switches at a size threshold;
    with no advantage anywhere the answer is 1 (no rounding)."""
    widths = sorted(throughput)
    edge = {}
    for i, c in enumerate(widths):
        nb = [throughput[w] for w in (widths[i - 1] if i else None, widths[i + 1] if i + 1 < len(widths) else None)
              if w is not None and abs(w - c) == 1]
        if nb:
            edge[c] = throughput[c] / max(nb)
    per_multiple = {}
    for m in candidates:
        vals = [v for c, v in edge.items() if c % m == 0]
        if vals:
            per_multiple[m] = statistics.fmean(vals)
    best = max(per_multiple.values())
    if best <= 1 + tolerance:
        return 1
    return min(m for m, v in per_multiple.items() if v >= (1 - tolerance) * best)


def _device_key(device, dtype) -> str:
    return f"v2|{device_name(device)}|{str(dtype).replace('torch.', '')}"


def default_round_to(device="cpu", dtype=torch.float32, measure: bool = True) -> int | None:
    """The cached measured multiple for this device/dtype; measured (a few seconds) on first use."""
    device = torch.device(device)
    key = _device_key(device, dtype)
    cache = json.loads(CACHE.read_text()) if CACHE.exists() else {}
    if key in cache:
        return cache[key]["round_to"]
    if not measure:
        return None
    thr = channel_throughput(device, dtype)
    m = best_multiple(thr)
    cache[key] = {"round_to": m, "measured": time.strftime("%Y-%m-%d")}
    try:
        atomic_write_json(CACHE, cache)
    except OSError:
        pass  # a read-only home only costs a re-measure next time
    return m
