"""prune.py routes beyond the default: data-free OBS without finetuning, pruning at initialisation, ONNX in
and out, and a measured-latency target (timing faked for the assertion's sake)."""
from pathlib import Path

import pytest
import torch

from metaprune import load_model
from metaprune.prune.pipeline import run_prune

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "checkpoints" / "examples" / "resnet-digits"


def _cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from metaprune.cli import to_dict

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return to_dict(compose("prune", overrides=[f"output_dir={tmp_path / 'out'}", "logger=none",
                                                   "metanet.checkpoint=none", *overrides]))


def test_obs_without_data_or_finetuning_beats_l2(tmp_path, digits):
    obs = run_prune(_cfg(tmp_path / "a", "stage=trained_nofinetune", "prune.importance=obs"), data=digits,
                    progress=False)
    l2 = run_prune(_cfg(tmp_path / "b", "stage=trained_nofinetune"), data=digits, progress=False)
    assert obs["finetune_history"] == [] and obs["final_acc"] == obs["pruned_acc"]
    assert obs["speedup"] >= 1.9 and l2["speedup"] >= 1.9
    print(f"2x without data or finetuning: obs {obs['pruned_acc']:.3f}, l2 {l2['pruned_acc']:.3f}")
    assert obs["pruned_acc"] > l2["pruned_acc"] + 0.2


def test_prune_at_init_then_train(tmp_path, digits):
    r = run_prune(_cfg(tmp_path, "stage=init", "model.checkpoint=null", "model.name=resnet",
                       "model.args={depth: 20, width: 16}", "finetune.epochs=6", "finetune.lr=0.1"),
                  data=digits, progress=False)
    assert r["stage"] == "init" and r["base_acc"] < 0.3  # an untrained network
    assert r["speedup"] >= 1.9 and r["final_acc"] >= 0.9
    assert r["pruning"]["importance"] == "init:snip"


def test_onnx_in_onnx_out(tmp_path, digits):
    from metaprune.onnx import export_onnx, verify_onnx

    src = load_model(EXAMPLE)
    export_onnx(src, torch.randn(1, 1, 8, 8), tmp_path / "net.onnx")
    r = run_prune(_cfg(tmp_path, f"model.onnx={tmp_path / 'net.onnx'}", "finetune.epochs=1"), data=digits,
                  progress=False)
    out = tmp_path / "out" / "pruned"
    assert r["speedup"] >= 1.9 and r["onnx"]["max_abs_diff_onnxruntime"] <= 1e-4
    pruned = load_model(out)  # fresh rebuild from safetensors + spec, no pickle
    assert verify_onnx(pruned, out / "model.onnx", torch.randn(3, 1, 8, 8)) <= 1e-4


def test_bad_stage_is_named(tmp_path, digits):
    from metaprune.cli import UsageError

    with pytest.raises(UsageError, match="stage='later' is invalid"):
        run_prune(_cfg(tmp_path, "stage=later"), data=digits, progress=False)
    assert not (tmp_path / "out").exists()
