import torch
import torch.nn as nn

from metaprune import build
from metaprune.metrics import latency, macs_and_params


def test_macs_of_known_layers():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    macs, params = macs_and_params(model, torch.randn(1, 3, 4, 4))
    conv = 3 * 8 * 9 * 4 * 4
    linear = 128 * 10
    assert params == 3 * 8 * 9 + 128 * 10 + 10 == sum(p.numel() for p in model.parameters())
    assert conv + linear <= macs <= conv + linear + 10  # the counter may add the bias adds


def test_counter_keeps_training_mode():
    model = build("resnet", depth=20, width=8).train()
    macs, _ = macs_and_params(model, torch.randn(1, 3, 32, 32))
    assert model.training and macs > 1e6


def test_latency_reports_median_and_spread():
    model = build("resnet", depth=20, width=8)
    r = latency(model, (3, 32, 32), batch_size=2, warmup=1, runs=5)
    assert r["p10_ms"] <= r["median_ms"] <= r["p90_ms"] and r["median_ms"] > 0
    assert r["batch_size"] == 2 and r["dtype"] == "float32" and r["device"].startswith("cpu")
