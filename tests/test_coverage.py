"""The coverage benchmark's per-model run records what a user needs: status, MACs ratio, output check, NetGraph
round trip, and for a failure one sentence naming the pattern."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("coverage_bench", ROOT / "benchmarks" / "coverage.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_hf_bert_both_tools_prune_with_outputs_intact():
    pytest.importorskip("transformers")
    bench = _bench()
    for tool in bench.TOOLS:
        rec = bench.run_one("hf", "bert", tool, threads=None)
        assert rec["status"] == "ok", rec
        assert 1.95 <= rec["macs_ratio"] <= 2.4 and rec["pruned_macs"] < rec["base_macs"]
        assert rec["output"] == {"ok": True, "shapes_equal": True, "finite": True}
    assert rec["attention_modules"] == 6  # torch-pruning was given the heads of query, key, value in 2 layers


def test_timm_model_records_prune_and_graph_round_trip():
    pytest.importorskip("timm")
    rec = _bench().run_one("timm", "test_efficientnet", "metaprune", threads=None)
    assert rec["status"] == "ok" and rec["input"] == [1, 3, 64, 64] and rec["protected"] == ["classifier"]
    assert 1.9 <= rec["macs_ratio"] <= 2.1
    assert rec["graph"]["of"] == "pruned" and rec["graph"]["ok"] is True and rec["graph"]["edges"] > 0


def test_failure_is_recorded_with_its_pattern():
    """ShuffleNetV2's channel shuffle defeats both tools: failed records, the model left as built for the round
    trip, and the aggregate names the pattern and a layer in one sentence."""
    bench = _bench()
    recs = {("torchvision", "shufflenet_v2_x0_5", tool): bench.run_one("torchvision", "shufflenet_v2_x0_5", tool,
                                                                       threads=None) for tool in bench.TOOLS}
    ours = recs[("torchvision", "shufflenet_v2_x0_5", "metaprune")]
    assert ours["status"] == "failed" and ours["stage"] == "prune" and "left unchanged" in ours["error"]
    assert ours["graph"]["of"] == "unpruned" and ours["params"] > 0 and ours["input"] == [1, 3, 64, 64]
    assert recs[("torchvision", "shufflenet_v2_x0_5", "torch_pruning")]["status"] == "failed"
    summary = bench.aggregate(recs, {"torchvision": ["shufflenet_v2_x0_5"]}, {})
    tv = summary["suites"]["torchvision"]
    assert tv["counts"]["both_fail"] == 1 and tv["metaprune_ok_pct"] == 0.0
    assert tv["silent_wrong_outputs"] == {"metaprune": [], "torch_pruning": []}
    why = tv["results"][0]["why"]
    assert why.startswith("Channel shuffle (a reshape regroups channels) at stage") and "\n" not in why
    assert "| torchvision | 1 | 0 | 0 | 0 | 1 |" in bench.markdown(summary)


def test_records_resume(tmp_path):
    bench = _bench()
    path = tmp_path / "records.jsonl"
    rows = [{"suite": "timm", "model": "a", "tool": t, "status": "ok"} for t in bench.TOOLS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = bench.sweep([("timm", "a")], path, timeout=5, mem_gb=None)  # both finished: nothing runs
    assert set(done) == {("timm", "a", t) for t in bench.TOOLS}
    assert len(path.read_text().splitlines()) == 2


class _NeedsEight(torch.nn.Module):
    """A parameter-free block that only works on 8 channels (as a hard-coded split or shuffle would)."""

    def forward(self, x):
        if x.shape[1] != 8:
            raise RuntimeError(f"expected 8 channels, got {x.shape[1]}")
        return x


def test_a_failed_prune_names_the_layer_it_failed_in():
    from metaprune.prune import PruningFailed, prune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), _NeedsEight(), torch.nn.Conv2d(8, 8, 3),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(1, 3, 12, 12)
    with pytest.raises(PruningFailed) as e:
        prune(model, x, target_speedup=1.5)
    msg = str(e.value)
    assert "forward fails in layer 2 (_NeedsEight)" in msg and "expected 8 channels" in msg and "\n" not in msg
    assert model[0].out_channels == 8 and model(x).shape == (1, 4)  # left as it was


def test_a_channel_shuffle_fails_cleanly_naming_a_layer():
    """torch-pruning cannot map channels through a channel shuffle (its reshape mapping divides by zero: that op is
    left unmapped and its groups whole; others map the shuffle as the identity and break): the error names a layer in
    one sentence, and the model is left as it was."""
    import torchvision

    from metaprune.prune import PruningFailed, prune

    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PruningFailed, match=r"ShuffleNetV2 failed in layer stage\d\.\d\.branch\d\.\d+ \(\w+\) "
                                            r"\(\w+Error: [^\n]*\); the model was left unchanged$"):
        prune(model, x, target_speedup=2.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _Affine(torch.nn.Module):
    """A learned scale and shift of the whole tensor (timm's LearnableAffineBlock): one number each."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor([1.5]))
        self.bias = torch.nn.Parameter(torch.tensor([0.1]))

    def forward(self, x):
        return self.scale * x + self.bias


def test_a_layer_of_scalar_parameters_needs_no_rule():
    from metaprune.prune import prune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), _Affine(), torch.nn.ReLU(), torch.nn.Conv2d(16, 16, 3),
                                _Affine(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(16, 4)).eval()
    x = torch.randn(2, 3, 12, 12)
    res = prune(model, x, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.05) and model[0].out_channels < 16
    assert model(x).shape == (2, 4) and model[1].scale.shape == (1,)
