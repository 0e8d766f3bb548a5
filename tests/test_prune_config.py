"""prune.py's config is validated when the run starts: every bad value is one error naming its key, raised
before any model or data is loaded and before anything is written."""
import subprocess
import sys
from pathlib import Path

import pytest

from metaprune.cli import UsageError
from metaprune.prune import pipeline
from metaprune.prune.config import PruneConfig
from metaprune.prune.pipeline import run_prune

REPO = Path(__file__).resolve().parents[1]


def _compose(name, *overrides):
    from hydra import compose, initialize_config_dir

    from metaprune.cli import to_dict

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return to_dict(compose(name, overrides=list(overrides)))


@pytest.fixture
def no_loading(monkeypatch):
    """The load stage records that it ran and stops the run: a refusal must come before it."""
    calls = []

    def load(*args, **kwargs):
        calls.append(args)
        raise AssertionError("the run reached the load stage")

    monkeypatch.setattr(pipeline, "load", load)
    return calls


@pytest.mark.parametrize("override,pattern", [
    ("prune.importance=l3", r"prune\.importance='l3' is invalid: must be one of l1, l2, l2_max, lamp, random, taylor, obs"),
    ("latency.dtype=fp8", r"latency\.dtype='fp8' is invalid: must be float32 or bfloat16"),
    ("target.speedup=0.5", r"target\.speedup=0\.5 must be a number > 1"),
    ("target.params=one", r"target\.params='one' must be a number > 1"),
    ("+target.flops=2", r"unknown target option\(s\) \['flops'\]"),
    ("export=tflite", r"export='tflite' is invalid"),
    ("prune.round_to=0", r"prune\.round_to=0 is invalid: must be null, auto or an integer >= 1"),
    ("prune.init_criterion=grasp", r"prune\.init_criterion='grasp' is invalid"),
    ("prune.global_pruning=maybe", r"prune\.global_pruning='maybe' is invalid"),
    ("latency.runs=0", r"latency\.runs=0 is invalid: must be an integer > 0"),
    ("latency.batch_size=0", r"latency\.batch_size=0 is invalid: must be an integer > 0"),
    ("finetune.epochs=five", r"finetune\.epochs='five' must be an integer >= 0"),
    ("metanet.finetune_epochs=-1", r"metanet\.finetune_epochs=-1 must be an integer >= 0"),
    ("metanet.recalibrate_batches=-1", r"metanet\.recalibrate_batches=-1 must be an integer >= 0"),
    ("finetune.lr=-1", r"finetune: training option lr=-1 is invalid"),
    ("stage=later", r"stage='later' is invalid"),
    ("threads=0", r"threads=0 must be an integer >= 1"),
    ("+prune.importanec=l1", r"unknown prune option\(s\) \['importanec'\]"),
    ("export_onnx=true", r"export_onnx is gone: use export=onnx"),
    ("metanet.checkpoint=/nowhere/metanet", r"/nowhere/metanet: metanetwork checkpoint not found"),
    ("device=gpu", r"device='gpu' is invalid: give auto, cpu, cuda or cuda:N"),
    ("model.checkpoint=null", r"model\.checkpoint is required"),
    ("data.name=null", r"data=.* must be a data config with a name"),
])
def test_bad_value_fails_before_any_model_is_loaded(tmp_path, no_loading, override, pattern):
    cfg = _compose("prune", f"output_dir={tmp_path / 'out'}", "logger=none", override)
    with pytest.raises((UsageError, ValueError), match=pattern):
        run_prune(cfg, progress=False)
    assert no_loading == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("target,pattern", [
    ({"speedup": None}, r"set target\.speedup .*, target\.params .* or target\.latency_speedup"),
    ({"speedup": 2.0, "params": 2.0, "latency_speedup": 2.0}, r"set only one of target\.params and target\."),
])
def test_target_is_exactly_one_kind(tmp_path, no_loading, target, pattern):
    cfg = {"model": {"checkpoint": "x"}, "data": {"name": "digits"}, "output_dir": str(tmp_path / "out"),
           "target": target}
    with pytest.raises(UsageError, match=pattern):
        run_prune(cfg, progress=False)
    assert no_loading == []


def test_obs_and_init_take_a_macs_target_before_loading(tmp_path, no_loading):
    for override in ("prune.importance=obs", "stage=init"):
        cfg = _compose("prune", f"output_dir={tmp_path / 'out'}", "logger=none", override, "target.params=2")
        with pytest.raises(UsageError, match=r"takes target\.speedup \(MACs\), not target\.params"):
            run_prune(cfg, progress=False)
    cfg = _compose("prune", f"output_dir={tmp_path / 'out'}", "logger=none", "stage=init", "model.checkpoint=null")
    with pytest.raises(UsageError, match=r"stage=init needs model\.name"):
        run_prune(cfg, progress=False)
    assert no_loading == []


def test_the_composed_defaults_validate_to_what_the_run_uses(tmp_path):
    cfg = PruneConfig.from_dict(_compose("prune", f"output_dir={tmp_path}", "target.latency_speedup=1.5"))
    assert cfg.target == {"latency_speedup": 1.5}  # replaces the composed default speedup
    assert cfg.prune.importance == "l2" and cfg.latency.runs == 20 and cfg.finetune.epochs == 5
    assert cfg.metanet_checkpoint == Path("checkpoints/metanet/digits") and cfg.export == []
    assert cfg.raw["target"]["speedup"] == 2.0  # report.json keeps the config as given


def test_one_ignored_layer_given_as_a_string_is_one_name(tmp_path):
    cfg = PruneConfig.from_dict(_compose("prune", f"output_dir={tmp_path}", "prune.ignored_layers=layer1.0.conv1"))
    assert cfg.prune.ignored_layers == ("layer1.0.conv1",)  # not its 14 characters
    with pytest.raises(UsageError, match=r"prune\.ignored_layers=\[1, 2\] must be a list of module names"):
        PruneConfig.from_dict(_compose("prune", f"output_dir={tmp_path}", "prune.ignored_layers=[1,2]"))


def _cli(script, *overrides):
    return subprocess.run([sys.executable, str(REPO / script), *overrides, "hydra.run.dir=/nonexistent/never",
                           "logger=none"], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_metanet_presets_of_the_other_entry_point_are_one_clear_error():
    """configs/metanet/ = train_meta.py's architecture presets, configs/apply_metanet/ = how prune.py applies a
    trained one; naming one kind to the other entry point says so instead of a traceback."""
    proc = _cli("prune.py", "metanet=large")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: metanet=large is not a prune.py preset (none, shipped)"), proc.stderr
    proc = _cli("train_meta.py", "metanet=shipped")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Could not find 'metanet/shipped'" in proc.stderr and "large" in proc.stderr, proc.stderr


def _prune_entry():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prune_entry", REPO / "prune.py")
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    return entry


def test_prune_py_metanet_none_still_selects_the_preset():
    entry = _prune_entry()
    args = entry._preset_choices(["metanet=none", "metanet.finetune_epochs=2", "target.speedup=3"])
    assert args == ["apply_metanet@metanet=none", "metanet.finetune_epochs=2", "target.speedup=3"]
    cfg = PruneConfig.from_dict(_compose("prune", *args, "output_dir=x"))
    assert cfg.metanet_checkpoint is None and cfg.metanet.finetune_epochs == 2
    assert entry._preset_choices(["metanet=none,shipped"]) == ["apply_metanet@metanet=none,shipped"]  # multirun
    assert _compose("quality")["metanet"]["hidden"] == 16  # quality.yaml still composes an architecture preset


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs" / "prune_experiment").glob("*.yaml")))
def test_every_prune_experiment_composes_and_validates(name, tmp_path):
    """prune.py experiment=X selects configs/prune_experiment/X.yaml (as prune.py maps it), which composes into a
    config the run accepts, with files that exist."""
    args = _prune_entry()._preset_choices([f"experiment={name}", "target.speedup=4"])
    assert args == [f"prune_experiment={name}", "target.speedup=4"]
    cfg = PruneConfig.from_dict(_compose("prune", *args, f"output_dir={tmp_path}"))
    assert cfg.raw["data"]["name"] == "fashion_mnist" and cfg.target == {"speedup": 4.0}  # the override wins
    assert (REPO / cfg.raw["model"]["checkpoint"] / "spec.json").is_file()


def test_fashion_mnist_experiments_are_the_protocol_with_and_without_the_metanetwork(tmp_path):
    """The README's Fashion-MNIST protocol: the shipped metanetwork (named: auto does not apply it), rewritten and
    recalibrated, no recovery epoch, l2_max to 3x ranked by architecture, 2 finetune epochs; the matched
    baseline prunes the same network the same way with the same 2 finetune epochs."""
    meta = PruneConfig.from_dict(_compose("prune", "prune_experiment=fashion_mnist", f"output_dir={tmp_path}"))
    base = PruneConfig.from_dict(_compose("prune", "prune_experiment=fashion_mnist_depgraph", f"output_dir={tmp_path}"))
    assert meta.metanet_checkpoint == Path("checkpoints/metanet/fashion_mnist") and base.metanet_checkpoint is None
    assert meta.finetune.epochs == base.finetune.epochs == 2 and meta.target == base.target == {"speedup": 3.0}
    from metaprune.metanet.resolve import recalibration_batches, recovery_epochs

    assert recovery_epochs(REPO / meta.metanet_checkpoint, "auto") == 0
    assert recalibration_batches(REPO / meta.metanet_checkpoint, "auto") == 20
    assert meta.prune == base.prune and meta.prune.importance == "l2_max" and meta.prune.global_pruning == "attention"
    assert meta.raw["model"] == base.raw["model"] and meta.metanet.max_val_drop == 0.5


def test_experiment_of_the_other_entry_point_is_one_clear_error(capsys):
    """configs/experiment/ = train_meta.py's (and quality.py's) experiments, configs/prune_experiment/ = prune.py's:
    prune.py names where each kind lives instead of Hydra's 'Could not override' about a zoo it has no slot for;
    train_meta.py lists its own experiments."""
    from hydra.errors import MissingConfigException

    with pytest.raises(SystemExit) as e:
        _prune_entry()._preset_choices(["target.speedup=2", "experiment=resnet56_cifar10"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(
        "error: experiment=resnet56_cifar10 is not a prune.py preset (fashion_mnist, fashion_mnist_depgraph)"), err
    assert "configs/experiment/ holds train_meta.py's and quality.py's experiments" in err
    with pytest.raises(MissingConfigException, match=r"Could not find 'experiment/fashion_mnist_depgraph'"):
        _compose("train_meta", "experiment=fashion_mnist_depgraph")
    assert _compose("train_meta", "experiment=fashion_mnist")["zoo"]["name"] == "fashion_mnist"  # still composes
