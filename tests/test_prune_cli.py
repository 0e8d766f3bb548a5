"""prune.py at the boundary: one clear error, non-zero exit, nothing left behind, the input untouched."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from metaprune.cli import friendly_errors
from metaprune.io import save_model, write_result_marker
from metaprune.models import build
from metaprune.prune.pipeline import run_prune
from metaprune.train import fit

REPO = Path(__file__).resolve().parents[1]


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """An (untrained) digits ResNet-8 as a metaprune checkpoint and as a plain .pt state dict."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = build("resnet", depth=8, width=8, num_classes=10, in_channels=1)
    save_model(model, root / "resnet8")
    torch.save(model.state_dict(), root / "resnet8.pt")
    return root


def _run(tmp_path, *overrides, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / "prune.py"), f"hydra.run.dir={tmp_path / 'hydra'}", "logger=none",
           f"output_dir={tmp_path / 'out'}", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)


def _assert_refused(proc, tmp_path, pattern, inputs=()):
    import re

    assert proc.returncode != 0, proc.stdout
    err = proc.stderr.strip()
    assert err.startswith("error:") and "Traceback" not in err, err
    assert re.search(pattern, err), err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "hydra").exists()  # Hydra's run dir is removed too (subprocess runs)


def _model_args(ckpt_name="resnet"):
    return [f"model.name={ckpt_name}", "+model.args.depth=8", "+model.args.width=8"]


def _run_in_process(tmp_path, capsys, data, *overrides):
    """prune.py's config composed by Hydra and run through the same error boundary, without a subprocess."""
    from hydra import compose, initialize_config_dir

    from metaprune.cli import to_dict

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = to_dict(compose("prune", overrides=[f"output_dir={tmp_path / 'out'}", "logger=none", *overrides]))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        friendly_errors(run_prune)(cfg, data=data, progress=False)
    err = capsys.readouterr().err
    return subprocess.CompletedProcess([], exc.value.code, "", err)


def test_missing_checkpoint(tmp_path):
    proc = _run(tmp_path, f"model.checkpoint={tmp_path / 'nope'}")
    _assert_refused(proc, tmp_path, r"nope: checkpoint not found")


def test_unreadable_checkpoint(tmp_path, capsys, digits, small_ckpt):
    bad = tmp_path / "truncated"
    bad.mkdir()
    (bad / "spec.json").write_bytes((small_ckpt / "resnet8" / "spec.json").read_bytes())
    data = (small_ckpt / "resnet8" / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    before = _hash(bad)
    proc = _run_in_process(tmp_path, capsys, digits, f"model.checkpoint={bad}")
    _assert_refused(proc, tmp_path, r"not a readable safetensors file")
    assert _hash(bad) == before


def test_file_that_is_not_a_checkpoint(tmp_path, capsys, digits):
    bad = tmp_path / "notes.pt"
    bad.write_text("these are not weights\n")
    before = _hash(bad)
    proc = _run_in_process(tmp_path, capsys, digits, f"model.checkpoint={bad}", *_model_args())
    _assert_refused(proc, tmp_path, r"notes\.pt: not a PyTorch checkpoint")
    assert _hash(bad) == before


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path, capsys, digits):
    evil = _Evil()
    evil.marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pt"
    torch.save({"conv1.weight": evil}, bad)
    before = _hash(bad)
    proc = _run_in_process(tmp_path, capsys, digits, f"model.checkpoint={bad}", *_model_args())
    _assert_refused(proc, tmp_path, r"refused: .*could run code")
    assert not evil.marker.exists()
    assert _hash(bad) == before


def test_weights_that_do_not_fit_name_the_keys(tmp_path, capsys, digits, small_ckpt):
    src = small_ckpt / "resnet8.pt"
    before = _hash(src)
    proc = _run_in_process(tmp_path, capsys, digits, f"model.checkpoint={src}", "model.name=vgg",
                           "+model.args.depth=11")
    _assert_refused(proc, tmp_path, r"do not fit the architecture: missing keys \['features\.0\.weight'")
    assert _hash(src) == before


def test_nan_weights(tmp_path, capsys, digits, small_ckpt):
    state = torch.load(small_ckpt / "resnet8.pt", weights_only=True)
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    before = _hash(bad)
    proc = _run_in_process(tmp_path, capsys, digits, f"model.checkpoint={bad}", *_model_args())
    _assert_refused(proc, tmp_path, r"NaN or Inf values in 1 tensor\(s\): layer1\.0\.conv1\.weight")
    assert _hash(bad) == before


@pytest.mark.parametrize("speedup,pattern", [
    (1.0, r"target\.speedup=1\.0 must be a number > 1"),
    (500.0, r"unreachable without removing a whole layer: .* about \d+\.\d+x"),
])
def test_bad_target(tmp_path, capsys, digits, small_ckpt, speedup, pattern):
    ckpt = small_ckpt / "resnet8"
    before = _hash(ckpt)
    proc = _run_in_process(tmp_path, capsys, digits, f"model.checkpoint={ckpt}", f"target.speedup={speedup}",
                           "finetune.epochs=0")
    _assert_refused(proc, tmp_path, pattern)
    assert _hash(ckpt) == before


def test_output_dir_with_a_run_is_refused_unless_overwrite(tmp_path, small_ckpt):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text("{}")
    write_result_marker(out, "prune")  # a previous run's result (a directory without the marker is never replaced)
    proc = _run(tmp_path, f"model.checkpoint={small_ckpt / 'resnet8'}")
    assert proc.returncode != 0
    assert "already holds a run; pass overwrite=true" in proc.stderr
    assert (out / "report.json").read_text() == "{}"  # untouched
    assert not (tmp_path / "hydra").exists()


def test_unprunable_op_is_named_and_nothing_written(tmp_path, capsys, small_ckpt, digits):
    class Mixer(nn.Module):  # a transform that returns a network with a layer the pruner cannot handle
        def __init__(self, body):
            super().__init__()
            self.body = body
            self.mix = nn.Bilinear(10, 10, 16)  # reached by the channels of the body's last layer
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            h = self.body(x)
            return self.fc(self.mix(h, h))

    def transform(model, data):
        wrapped = Mixer(model)
        wrapped.metaprune_spec = model.metaprune_spec
        return wrapped

    cfg = {"model": {"checkpoint": str(small_ckpt / "resnet8")}, "data": {"name": "digits"}, "metanet": "none",
           "target": {"speedup": 1.5}, "prune": {}, "finetune": {"epochs": 0}, "output_dir": str(tmp_path / "out"),
           "device": "cpu", "latency": {"runs": 2, "warmup": 1}, "threads": 1}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        friendly_errors(run_prune)(cfg, transform=transform, data=digits, progress=False)
    assert exc.value.code != 0
    assert "error: cannot prune layer(s) mix (Bilinear)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_prune_py_end_to_end(tmp_path, small_ckpt):
    """A clean run: table on stdout, report with every key, a pruned model that reloads, the input untouched."""
    ckpt = small_ckpt / "resnet8"
    before = _hash(ckpt)
    proc = _run(tmp_path, f"model.checkpoint={ckpt}", "finetune.epochs=1", "latency.runs=3", "prune.round_to=2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "test accuracy" in proc.stdout and "speedup (MACs)" in proc.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for key in ["base_acc", "pruned_acc", "final_acc", "base_macs", "pruned_macs", "speedup", "base_params",
                "pruned_params", "base_latency_ms", "pruned_latency_ms", "device", "config", "timings_s"]:
        assert key in report, key
    assert report["speedup"] == pytest.approx(2.0, rel=0.03)
    assert {"load", "prune", "finetune", "save", "total"} <= set(report["timings_s"])
    assert report["config"]["prune"]["round_to"] == 2
    assert report["transformed_acc"] is not None  # the shipped metanetwork ran by default
    from metaprune import load_model

    pruned = load_model(tmp_path / "out" / "pruned")
    assert sum(p.numel() for p in pruned.parameters()) == report["pruned_params"]
    assert _hash(ckpt) == before


def test_transform_hook_runs_before_pruning(tmp_path, small_ckpt, digits):
    """The metanetwork's plug: transform(model, data) -> model, then a short finetune, then pruning."""
    seen = {}

    def transform(model, data):
        seen["shape"] = tuple(data.input_shape)
        with torch.no_grad():
            model.layer1[0].conv1.weight[:4].zero_()  # what a sparsifying metanetwork would do
        return model

    cfg = {"model": {"checkpoint": str(small_ckpt / "resnet8")}, "data": {"name": "digits"},
           "metanet": {"finetune_epochs": 1, "checkpoint": None}, "target": {"speedup": 1.5}, "prune": {},
           "finetune": {"epochs": 0}, "output_dir": str(tmp_path / "out"), "device": "cpu",
           "latency": {"runs": 2, "warmup": 1}, "threads": 1}
    report = run_prune(cfg, transform=transform, data=digits, progress=False)
    assert seen["shape"] == (1, 8, 8)
    assert report["transformed_acc"] is not None
    assert {"transform", "transform_finetune", "prune"} <= set(report["timings_s"])
    assert report["speedup"] == pytest.approx(1.5, rel=0.05)
    assert (tmp_path / "out" / "pruned" / "model.safetensors").exists()


def test_rewrite_with_stale_batch_norms_is_recalibrated_before_pruning(tmp_path, digits):
    """A rewrite that scales every conv in front of a batch norm keeps the network's function but leaves the
    stored statistics stale: ``metanet.recalibrate_batches`` re-estimates them (forward passes only) and the
    rewritten network is as accurate as the original again; without it, it is not."""
    def transform(model, data):
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.mul_(3.0)
        return model

    torch.manual_seed(0)
    model = build("resnet", depth=8, width=8, num_classes=10, in_channels=1)
    fit(model, digits, {"epochs": 4, "lr": 0.05, "batch_size": 64, "device": "cpu", "progress": False})
    save_model(model, tmp_path / "trained")

    def run(batches, name):
        cfg = {"model": {"checkpoint": str(tmp_path / "trained")}, "data": {"name": "digits"},
               "metanet": {"finetune_epochs": 0, "recalibrate_batches": batches, "checkpoint": None},
               "target": {"speedup": 1.5}, "prune": {}, "finetune": {"epochs": 0}, "output_dir": str(tmp_path / name),
               "device": "cpu", "latency": {"runs": 2, "warmup": 1}, "threads": 1}
        return run_prune(cfg, transform=transform, data=digits, progress=False)

    stale, fresh = run(0, "stale"), run(10, "fresh")
    assert "transform_recalibrate" in fresh["timings_s"] and "transform_recalibrate" not in stale["timings_s"]
    assert fresh["transformed_acc"] >= fresh["base_acc"] - 0.02, fresh
    assert stale["transformed_acc"] < fresh["transformed_acc"] - 0.1, (stale["transformed_acc"], fresh)


def test_prune_py_on_an_lstm_picks_its_metanet_and_exports(tmp_path):
    """A family beyond CNNs through the whole prune.py run: metanetwork (the one shipped for digits_seq, chosen
    by metanet.checkpoint=auto), DepGraph grouping with the LSTM pruner, finetuning, safe save, both exports."""
    torch.manual_seed(0)
    ckpt = tmp_path / "lstm"
    save_model(build("lstm", hidden_size=32, num_layers=2), ckpt)
    proc = _run(tmp_path, f"model.checkpoint={ckpt}", "data=digits_seq", "finetune.epochs=1", "latency.runs=2",
                "export=both")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metanet"] == "checkpoints/metanet/digits_seq" and report["transformed_acc"] is not None
    assert report["speedup"] == pytest.approx(2.0, rel=0.05)
    assert report["onnx"]["max_abs_diff_onnxruntime"] <= 1e-4
    assert report["torch_export"]["max_abs_diff_reloaded"] <= 1e-4
    from metaprune import load_model

    pruned = load_model(tmp_path / "out" / "pruned")
    assert pruned.lstm.hidden_size < 32 and sum(p.numel() for p in pruned.parameters()) == report["pruned_params"]


def test_every_dataset_has_a_config():
    from metaprune.data import available

    assert {f"{n}.yaml" for n in available()} <= {p.name for p in (REPO / "configs" / "data").iterdir()}


def test_prune_py_on_a_gat_skips_a_metanet_that_never_saw_it(tmp_path):
    """The default metanetwork (auto: none shipped for sbm, so the digits one) has no encoders for GAT neurons:
    the run says so and prunes the network's own weights instead of rewriting them with borrowed encoders;
    node-id inputs reach the latency timer and both exports as ids."""
    torch.manual_seed(0)
    ckpt = tmp_path / "gat"
    save_model(build("gat"), ckpt)
    proc = _run(tmp_path, f"model.checkpoint={ckpt}", "data=sbm", "finetune.epochs=1", "latency.runs=2",
                "export=both")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "note: metanetwork checkpoints/metanet/digits skipped" in proc.stdout and "node:gat_head" in proc.stdout
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metanet"].startswith("checkpoints/metanet/digits (skipped") and report["transformed_acc"] is None
    assert 1.85 <= report["speedup"] <= 2.1  # 8 head dimensions: the closest step to 2x is 1.93x
    assert report["torch_export"]["max_abs_diff_reloaded"] <= 1e-4 and report["onnx"]["max_abs_diff_onnxruntime"] <= 1e-4
