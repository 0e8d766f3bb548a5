"""Deployment export of a pruned model: torch.export programs (and ONNX) reload with the model's outputs; the
pipeline writes and verifies the formats asked for; bad values and uncapturable models are one clear error."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from metaprune import build
from metaprune.cli import UsageError
from metaprune.export import ExportError, export_program, parse_formats, verify_program
from metaprune.prune import prune
from metaprune.prune.pipeline import run_prune

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pruned_resnet():
    torch.manual_seed(0)
    model = build("resnet", depth=20, width=8, num_classes=10, in_channels=1)
    r = prune(model, torch.randn(1, 1, 8, 8), target_speedup=2.0)
    assert r.speedup >= 1.9
    return model.eval()


def test_pruned_resnet_reloads_with_the_same_outputs(tmp_path, pruned_resnet):
    x = torch.randn(1, 1, 8, 8)  # one example, as data.example_inputs() gives: the batch axis still comes out dynamic
    path = export_program(pruned_resnet, x, tmp_path / "model.pt2")
    assert path.is_file() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    assert verify_program(pruned_resnet, path, x) <= 1e-5
    program = torch.export.load(str(path))  # our own file, just written: see verify_program's docstring
    with torch.no_grad():
        for batch in (1, 2, 7):  # the batch axis is dynamic
            y = torch.randn(batch, 1, 8, 8)
            torch.testing.assert_close(program.module()(y), pruned_resnet(y), atol=1e-5, rtol=0)


def test_verification_catches_a_program_that_differs(tmp_path, pruned_resnet):
    x = torch.randn(2, 1, 8, 8)
    path = export_program(pruned_resnet, x, tmp_path / "model.pt2")
    changed = build("resnet", depth=20, width=8, num_classes=10, in_channels=1)
    prune(changed, torch.randn(1, 1, 8, 8), target_speedup=2.0)
    changed.load_state_dict(pruned_resnet.state_dict())
    with torch.no_grad():
        changed.fc.bias += 0.5
    with pytest.raises(ExportError, match=r"differs from the model by 5\.00e-01"):
        verify_program(changed, path, x)


def test_uncapturable_model_names_model_and_module(tmp_path):
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow: torch.export cannot capture it

    model = nn.Sequential(nn.Linear(4, 4), Branchy())
    named = r"cannot capture Sequential in module '1' \(test_export\.py:\d+ in forward\)"
    with pytest.raises(ExportError, match=named):
        export_program(model, torch.randn(3, 4), tmp_path / "model.pt2")
    assert not list(tmp_path.iterdir())  # nothing written


def _cfg(tmp_path, *overrides):
    from hydra import compose, initialize_config_dir

    from metaprune.cli import to_dict

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return to_dict(compose("prune", overrides=[f"output_dir={tmp_path / 'out'}", "logger=none",
                                                   "metanet.checkpoint=none", "stage=trained_nofinetune",
                                                   "latency.runs=2", "latency.warmup=1", *overrides]))


def test_pipeline_exports_both_and_records_both_diffs(tmp_path, digits):
    from metaprune import load_model
    from metaprune.onnx import verify_onnx

    r = run_prune(_cfg(tmp_path, "export=both"), data=digits, progress=False)
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["onnx"]["path"] == "pruned/model.onnx" and report["torch_export"]["path"] == "pruned/model.pt2"
    assert report["onnx"]["max_abs_diff_onnxruntime"] <= 1e-4
    assert report["torch_export"]["max_abs_diff_reloaded"] <= 1e-4
    assert r["speedup"] >= 1.9
    pruned = load_model(out / "pruned")  # the saved model, rebuilt without pickle, matches both files
    x = torch.randn(5, 1, 8, 8)
    assert verify_program(pruned, out / "pruned" / "model.pt2", x) <= 1e-4
    assert verify_onnx(pruned, out / "pruned" / "model.onnx", x) <= 1e-4


@pytest.mark.parametrize("value,want", [
    ("none", []), ("onnx", ["onnx"]), ("torch", ["torch"]), ("both", ["onnx", "torch"]),
    (["torch", "onnx"], ["onnx", "torch"])])
def test_export_values(value, want):
    assert parse_formats(value) == want


@pytest.mark.parametrize("override,pattern", [("export=pt3", r"export='pt3' is invalid: give none, onnx, torch, both"),
                                              ("export=[onnx,tflite]", r"export=\['onnx', 'tflite'\] is invalid"),
                                              ("export_onnx=true", r"export_onnx is gone: use export=onnx"),
                                              ("export_onnx=maybe", r"export_onnx is gone: use export=onnx")])
def test_bad_export_value_is_one_clear_error_before_any_work(tmp_path, digits, override, pattern):
    with pytest.raises(UsageError, match=pattern):
        run_prune(_cfg(tmp_path, override), data=digits, progress=False)
    assert not (tmp_path / "out").exists()
