"""MACs/params (torch-pruning's counter, corrected in ``metaprune.cost``) and measured latency."""
from __future__ import annotations

import contextlib
import statistics
import time

import torch
import torch.nn as nn

from .cost import macs_and_params
from .utils import preserve_mode

__all__ = ["macs_and_params", "latency", "sync", "autocast_for", "batch_of", "device_name"]


def sync(device) -> None:
    """Wait for queued CUDA work so a wall-clock reading covers it (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_for(device, dtype=torch.float32):
    """Autocast to ``dtype`` on ``device``, or nothing for float32."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


def batch_of(inputs, batch_size: int, device="cpu") -> torch.Tensor:
    """A batch of ``batch_size`` inputs: the rows of an example tensor repeated (its dtype kept: node or token
    ids stay integers), or standard-normal values when ``inputs`` is a shape (per-example, without the batch)."""
    if isinstance(inputs, torch.Tensor):
        return inputs[torch.arange(batch_size) % len(inputs)].to(device)
    return torch.randn(batch_size, *inputs, device=device)


@torch.no_grad()
def latency(model: nn.Module, inputs, batch_size: int = 1, device="cpu", dtype=torch.float32,
            warmup: int = 5, runs: int = 20, channels_last: bool = False) -> dict:
    """Median wall time (ms) of one forward pass on ``batch_of(inputs, batch_size)`` (an example tensor, or a
    per-example shape), after warm-up, with CUDA synchronisation.

    Returns ``{"median_ms", "p10_ms", "p90_ms", "batch_size", "dtype", "device"}``.
    """
    device = torch.device(device)
    x = batch_of(inputs, batch_size, device)
    times = []
    with preserve_mode(model), autocast_for(device, dtype):
        model = model.eval().to(device)
        if channels_last and x.dim() == 4:
            x = x.to(memory_format=torch.channels_last)
            model = model.to(memory_format=torch.channels_last)
        for _ in range(warmup):
            model(x)
        sync(device)
        for _ in range(runs):
            t0 = time.perf_counter()
            model(x)
            sync(device)
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p10_ms": times[int(0.1 * (len(times) - 1))],
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "batch_size": batch_size,
        "dtype": str(dtype).replace("torch.", ""),
        "device": device_name(device),
    }


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
