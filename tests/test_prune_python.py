"""The pruning run from a notebook: ``metaprune.prune_checkpoint`` with plain arguments, no Hydra."""
from pathlib import Path

import pytest

import metaprune
from metaprune.cli import UsageError

EXAMPLE = Path(__file__).resolve().parents[1] / "checkpoints" / "examples" / "resnet-digits"


def test_prune_checkpoint_is_the_prune_py_run_with_plain_arguments(tmp_path, digits):
    """Same checkpoint, target, metanetwork and finetune as ``prune.py finetune.epochs=1``: the same numbers."""
    from hydra import compose, initialize_config_dir

    from metaprune import prune_checkpoint
    from metaprune.cli import to_dict
    from metaprune.prune.pipeline import run_prune

    report = prune_checkpoint(EXAMPLE, digits, speedup=2.0, metanet="auto", finetune_epochs=1,
                              output_dir=tmp_path / "out", latency={"runs": 2, "warmup": 1}, progress=False)
    assert report["metanet"] == "checkpoints/metanet/digits" and report["transformed_acc"] is not None
    assert report["speedup"] == pytest.approx(2.0, rel=0.03)
    assert report["final_acc"] > report["pruned_acc"] + 0.4  # the finetune recovers what 2x pruning lost
    with initialize_config_dir(config_dir=str(EXAMPLE.parents[2] / "configs"), version_base="1.3"):
        cfg = to_dict(compose("prune", overrides=[f"output_dir={tmp_path / 'cli'}", "logger=none", "finetune.epochs=1",
                                                  "latency.runs=2", "latency.warmup=1"]))
    cli = run_prune(cfg, data=digits, progress=False)
    for key in ("base_acc", "transformed_acc", "pruned_acc", "final_acc", "pruned_macs", "pruned_params"):
        assert report[key] == cli[key], key
    assert report["config"]["finetune"] == {"epochs": 1, "lr": 0.02, "select": "best_val"}
    pruned = metaprune.load_model(tmp_path / "out" / "pruned")
    assert sum(p.numel() for p in pruned.parameters()) == report["pruned_params"]


def test_prune_checkpoint_refuses_a_bad_argument_before_loading(tmp_path):
    with pytest.raises(UsageError, match=r"prune\.importance='l3' is invalid"):
        metaprune.prune_checkpoint(tmp_path / "no-such-checkpoint", importance="l3", output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before the (missing) checkpoint was even looked at
