"""Hardware-aware pruning: measured channel multiples and the latency-target search (timing faked: tests
assert the search's behaviour, benchmarks/latency.py measures real time)."""
import json
from pathlib import Path

import pytest
import torch

from metaprune import build
from metaprune.hardware import best_multiple
from metaprune.metrics import macs_and_params
from metaprune.prune import prune
from metaprune.prune.latency import paired_speedup, prune_measured_round_to, prune_to_latency
from metaprune.prune.pruner import UnreachableTarget


def test_best_multiple_picks_smallest_fast_multiple():
    # widths that are multiples of 16 run at full speed, others at half: 16 must be chosen, not 32/64
    thr = {c: (2.0 if c % 16 == 0 else 1.0) for c in range(64, 161)}
    assert best_multiple(thr) == 16
    assert best_multiple({c: 1.0 for c in range(64, 100)}) == 1  # no width effect: no rounding


def _fake_timer(exponent):
    """Latency proportional to MACs**exponent: a device where time falls slower than MACs."""
    x = torch.randn(1, 1, 8, 8)

    def timer(base, cand, input_shape, batch_size=1, device="cpu", dtype=None, runs=0):
        b = macs_and_params(base, x)[0] ** exponent
        c = macs_and_params(cand, x)[0] ** exponent
        return b, c, b / c

    return timer


@pytest.mark.parametrize("target", [1.5, 2.0])
def test_latency_target_is_met_where_macs_target_falls_short(target):
    x = torch.randn(1, 1, 8, 8)
    model = build("resnet", depth=20, width=16, num_classes=10, in_channels=1)
    timer = _fake_timer(0.6)
    result, search = prune_to_latency(model, x, target, timer=timer)
    assert search["latency_speedup"] >= target  # the measured ratio reaches the target...
    assert search["latency_speedup"] <= target * 1.15  # ...without pruning far past it
    assert result.speedup > target  # it took more MACs reduction than a MACs target would have
    assert all(t["latency_speedup"] > 0 for t in search["trials"]) and len(search["trials"]) <= 8
    assert model(x).shape == (1, 10)


def test_unreachable_latency_target_names_the_best_found():
    x = torch.randn(1, 1, 8, 8)
    model = build("resnet", depth=20, width=8, num_classes=10, in_channels=1)
    with pytest.raises(ValueError, match="not reachable.*best measured"):
        prune_to_latency(model, x, 50.0, timer=_fake_timer(0.2), max_steps=5)
    with pytest.raises(ValueError, match="must be > 1"):
        prune_to_latency(model, x, 1.0)


def test_paired_timing_of_identical_models_is_near_one():
    model = build("resnet", depth=20, width=8, num_classes=10, in_channels=1)
    b, c, ratio = paired_speedup(model, model, (1, 8, 8), batch_size=4, runs=5)
    assert b > 0 and c > 0 and 0.2 < ratio < 5  # same network: no systematic difference (loose: shared CI)


def test_measured_round_to_is_lowered_only_where_the_target_needs_it():
    """A ResNet of width 8 kept at multiples of a measured 8 reaches about 2.1x, so 3x is unreachable. As
    ``round_to=auto`` the largest smaller multiple that reaches it is used, with a warning; an explicit
    ``round_to=8`` stays the user's constraint and fails naming it; a target reachable at 8 keeps 8."""
    x = torch.randn(1, 1, 8, 8)
    narrow = build("resnet", depth=20, width=8, num_classes=10, in_channels=1)
    with pytest.raises(UnreachableTarget, match="round_to=8"):
        prune(narrow, x, target_speedup=3.0, round_to=8)
    with pytest.warns(UserWarning, match=r"measured channel multiple 8.*round_to=4"):
        result = prune_measured_round_to(narrow, x, target_speedup=3.0, round_to=8)
    assert result.round_to == 4 and result.speedup == pytest.approx(3.0, rel=0.05) and narrow(x).shape == (1, 10)
    assert all(m.out_channels % 4 == 0 for m in narrow.modules() if isinstance(m, torch.nn.Conv2d))
    wide = build("resnet", depth=20, width=16, num_classes=10, in_channels=1)
    assert prune_measured_round_to(wide, x, target_speedup=3.0, round_to=8).round_to == 8


def test_prune_run_with_round_to_auto_lowers_a_multiple_the_network_cannot_use(tmp_path, digits, monkeypatch):
    """prune.py prune.round_to=auto on the demo ResNet (16/32/64 channels) where the device measured 64: no group
    could shrink at 64, so the run prunes at the largest multiple that reaches 2x and its report says which."""
    from hydra import compose, initialize_config_dir

    import metaprune.hardware
    from metaprune.cli import to_dict
    from metaprune.prune.pipeline import run_prune

    monkeypatch.setattr(metaprune.hardware, "default_round_to", lambda device, dtype: 64)
    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(config_dir=configs, version_base="1.3"):
        cfg = to_dict(compose("prune", overrides=[f"output_dir={tmp_path / 'out'}", "logger=none", "metanet.checkpoint=none",
                                                  "stage=trained_nofinetune", "prune.round_to=auto"]))
    with pytest.warns(UserWarning, match=r"measured channel multiple 64.*round_to=(32|16|8)\b"):
        report = run_prune(cfg, data=digits, progress=False)
    used = report["pruning"]["round_to"]
    assert used in (32, 16, 8) and report["speedup"] == pytest.approx(2.0, rel=0.05)
    pruned = json.loads((tmp_path / "out" / "pruned" / "spec.json").read_text())["shapes"]
    assert all(shape[0] % used == 0 for name, shape in pruned.items() if name.endswith("conv2.weight"))
