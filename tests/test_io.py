import json
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch_pruning as tp

from metaprune import CheckpointError, build, load_model, load_state_dict_file, save_model
from metaprune.io import atomic_dir

from conftest import REPO


def _run_fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    return out.stdout


def _pruned_resnet():
    torch.manual_seed(0)
    model = build("resnet", depth=20, width=16, num_classes=10, in_channels=1)
    x = torch.randn(1, 1, 8, 8)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.5, ignored_layers=[model.fc])
    pruner.step()
    model.eval()
    return model


@pytest.mark.parametrize("pruned", [False, True])
def test_save_load_fresh_process_identical_outputs(tmp_path, pruned):
    model = _pruned_resnet() if pruned else build("vit", image_size=8, patch_size=2, depth=2, dim=32, heads=4,
                                                  num_classes=10, in_channels=1).eval()
    if pruned:
        assert model.layer1[0].conv1.out_channels < 16  # widths really changed
    x = torch.randn(4, 1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(x), tmp_path / "y.pt")
    save_model(model, tmp_path / "ckpt", extra={"note": "test"})
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["model.safetensors", "spec.json"]
    out = _run_fresh(
        "import torch, metaprune\n"
        f"m = metaprune.load_model({str(tmp_path / 'ckpt')!r})\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)\n"
        f"y = torch.load({str(tmp_path / 'y.pt')!r}, weights_only=True)\n"
        "print(torch.equal(m(x), y), m.metaprune_spec['extra']['note'])\n"
    )
    assert out.split() == ["True", "test"]


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"weight": Evil()}, f)
    before = bad.read_bytes()
    with pytest.raises(CheckpointError, match="could run code"):
        load_state_dict_file(bad)
    assert not marker.exists() and bad.read_bytes() == before


def test_plain_state_dict_files_load(tmp_path):
    model = build("resnet", depth=20, width=8)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "wrapped.pth")
    for f in ("sd.pt", "wrapped.pth"):
        state = load_state_dict_file(tmp_path / f)
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("content,match", [(b"not a checkpoint at all", "not a PyTorch checkpoint"), (None, "not found")])
def test_bad_files_are_named(tmp_path, content, match):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as e:
        load_state_dict_file(path)
    assert str(path) in str(e.value)


def test_nan_weights_and_wrong_architecture_are_refused(tmp_path):
    model = build("resnet", depth=20, width=8)
    save_model(model, tmp_path / "ok")
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
    save_model(model, tmp_path / "nan")
    with pytest.raises(CheckpointError, match="NaN or Inf.*fc.weight"):
        load_model(tmp_path / "nan")
    spec = json.loads((tmp_path / "ok" / "spec.json").read_text())
    spec["args"]["width"] = 16  # the weights are a width-8 network
    del spec["shapes"]
    (tmp_path / "ok" / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError, match="do not fit the architecture.*shape mismatch.*conv1.weight"):
        load_model(tmp_path / "ok")


def test_interrupted_write_leaves_old_checkpoint_intact(tmp_path):
    model = build("resnet", depth=20, width=8)
    save_model(model, tmp_path / "ckpt")
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "ckpt") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temp leftovers
    load_model(tmp_path / "ckpt")


def test_load_model_on_a_file_or_missing_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing")
    (tmp_path / "f.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_model(tmp_path / "f.pt")
