import subprocess
import sys
import time

import pytest
import torch

from metaprune import build, load_model
from metaprune.train import TrainConfig, evaluate, fit, train_network

from conftest import REPO


def test_cifar_resnet_learns_digits_to_95_percent(digits):
    """The issue's floor: a small CIFAR ResNet trained a few epochs on CPU reaches >= 95% test accuracy."""
    torch.manual_seed(0)
    model = build("resnet", depth=20, width=16, num_classes=10, in_channels=1)
    t0 = time.perf_counter()
    history = fit(model, digits, TrainConfig(epochs=8, lr=0.1, progress=False))
    seconds = time.perf_counter() - t0
    test = evaluate(model, digits.loader("test", 512, shuffle=False))
    print(f"resnet-20 on digits: {test['acc']:.2%} test accuracy in {seconds:.1f}s")
    assert test["acc"] >= 0.95
    assert history[-1]["val_acc"] >= 0.95 and len(history) == 8


@pytest.mark.parametrize("opt", [
    {"optimizer": "adamw", "lr": 3e-3, "schedule": "multistep", "milestones": (0.8,), "weight_decay": 0.05},
    {"optimizer": "sgd", "lr": 0.05, "schedule": "constant", "label_smoothing": 0.1, "warmup_epochs": 1},
])
def test_optimisers_and_schedules_train_a_vit(digits, opt):
    torch.manual_seed(0)
    model = build("vit", image_size=8, patch_size=2, depth=2, dim=32, heads=4, num_classes=10, in_channels=1)
    before = evaluate(model, digits.loader("val", 512, shuffle=False))["acc"]
    fit(model, digits, TrainConfig(epochs=6, batch_size=64, progress=False, **opt))
    after = evaluate(model, digits.loader("val", 512, shuffle=False))["acc"]
    assert after > max(0.6, before + 0.3)


def test_resume_matches_uninterrupted_run(digits, tmp_path):
    cfg = dict(epochs=4, lr=0.05, progress=False, seed=3)
    torch.manual_seed(0)
    ref = build("resnet", depth=20, width=8, num_classes=10, in_channels=1)
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    fit(ref, digits, cfg)

    half = build("resnet", depth=20, width=8, num_classes=10, in_channels=1)
    half.load_state_dict(init)
    _fit_then_stop(half, digits, cfg, tmp_path / "run", stop_after=2)  # killed during epoch 3
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["epoch"] == 2
    cont = build("resnet", depth=20, width=8, num_classes=10, in_channels=1)
    history = fit(cont, digits, cfg, resume_dir=tmp_path / "run")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    for k, v in ref.state_dict().items():
        assert torch.allclose(v.float(), cont.state_dict()[k].float(), atol=1e-5), k


def _fit_then_stop(model, data, cfg, resume_dir, stop_after):
    calls = {"n": 0}
    steps_per_epoch = len(data.loader("train", 128))

    def interrupt(_):
        calls["n"] += 1
        if calls["n"] > stop_after * steps_per_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(model, data, cfg, resume_dir=resume_dir, after_backward=interrupt)


def test_bad_training_option_is_named():
    with pytest.raises(ValueError, match="optimizer='adam' is invalid"):
        TrainConfig.from_dict({"optimizer": "adam"})
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epochz": 3})


def test_train_network_saves_a_loadable_checkpoint(tmp_path, digits):
    model, rec = train_network("vgg", {"depth": 11, "width": 8}, {"name": "digits", "batch_size": 64},
                               {"epochs": 2, "lr": 0.05}, output_dir=tmp_path / "vgg", progress=False, data=digits)
    loaded = load_model(tmp_path / "vgg")
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))
    assert loaded.metaprune_spec["extra"]["val_acc"] == rec["val_acc"] and rec["macs"] > 0


def test_train_cli_writes_model_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "m"
    cmd = [sys.executable, "train.py", "optim.epochs=1", f"output_dir={out}", "logger=none",
           f"hydra.run.dir={tmp_path / 'hydra'}"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr
    assert "resnet on digits" in first.stdout and (out / "model.safetensors").exists()
    before = (out / "model.safetensors").read_bytes()
    second = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert second.returncode == 2 and "overwrite=true" in second.stderr
    assert "Traceback" not in second.stderr and (out / "model.safetensors").read_bytes() == before
