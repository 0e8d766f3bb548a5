"""Meta-training: the group regulariser, a meta step, checkpoints, exact resume, Hydra composition."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metaprune.data import get_data
from metaprune.metanet import load_metanet
from metaprune.metatrain import MetaConfig, meta_train
from metaprune.train.objectives import group_regulariser

sys.path.insert(0, os.path.dirname(__file__))
from test_zoo import OPTIM, TINY, TINY_ROOT, tiny_zoo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUICK = {"steps": 2, "nets_per_step": 2, "batch_size": 32, "warmup_steps": 0, "val_every": 100, "lr": 3e-3}
SMALL_NET = {"hidden": 8, "layers": 1}


@pytest.fixture(scope="module")
def zoo():
    return tiny_zoo()


@pytest.fixture(scope="module")
def digits():
    return get_data("digits")


def _resnet8_groups():
    """A seeded digits ResNet-8 and its DepGraph groups (classifier protected)."""
    from metaprune.models import build
    from metaprune.prune import find_output_layers, groups

    torch.manual_seed(0)
    model = build("resnet", depth=8, width=4, num_classes=10, in_channels=1).eval()
    ex = torch.randn(1, 1, 8, 8)
    return model, groups(model, ex, ignored=find_output_layers(model, ex))


def test_group_regulariser_is_depgraphs_adaptive_group_l2():
    model, groups = _resnet8_groups()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    reg, stats = group_regulariser(params, groups, alpha=4.0)
    expected = 0.0
    for g in groups:
        norms = torch.sqrt(sum(params[s.param].detach().index_select(s.dim, s.idxs).movedim(s.dim, 0)
                               .pow(2).reshape(g.units, -1).sum(1) for s in g.slices))
        gamma = 4.0 ** ((norms.max() - norms) / (norms.max() - norms.min()))
        assert gamma.min() == pytest.approx(1.0) and gamma.max() == pytest.approx(4.0)
        expected += float((gamma * norms).sum())
    assert reg.item() == pytest.approx(expected, rel=1e-5)
    reg.backward()
    # the least important unit of a group is pushed hardest: gradient alpha * w / ||w|| on its weights
    # (read on a norm weight: 1-D parameters belong to one group only)
    g, s = next((g, s) for g in groups for s in g.slices if params[s.param].dim() == 1)
    w = params[s.param].detach().index_select(s.dim, s.idxs).movedim(s.dim, 0)
    grad = params[s.param].grad.index_select(s.dim, s.idxs).movedim(s.dim, 0)
    norms = torch.sqrt(sum(params[t.param].detach().index_select(t.dim, t.idxs).movedim(t.dim, 0)
                           .pow(2).reshape(g.units, -1).sum(1) for t in g.slices))
    weakest = int(norms.argmin())
    torch.testing.assert_close(grad[weakest], 4.0 * w[weakest] / norms[weakest], rtol=1e-4, atol=1e-6)
    assert 0 <= stats["small_units"] <= 1 and 1 <= stats["gamma_mean"] <= 4


def test_relative_regulariser_ignores_uniform_shrinking_and_rewards_concentration():
    model, groups = _resnet8_groups()
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    rel, _ = group_regulariser(params, groups, 4.0, kind="relative")
    half, _ = group_regulariser({k: v / 2 for k, v in params.items()}, groups, 4.0, kind="relative")
    plain, _ = group_regulariser(params, groups, 4.0)
    plain_half, _ = group_regulariser({k: v / 2 for k, v in params.items()}, groups, 4.0)
    assert half.item() == pytest.approx(rel.item(), rel=1e-5)  # shrinking everything does not pay ...
    assert plain_half.item() == pytest.approx(plain.item() / 2, rel=1e-5)  # ... while the plain form halves
    g = groups[0]
    weak = int(g.norms(params).argmin())
    sparser = dict(params)
    for t in g.slices:  # zero the weakest unit of the group everywhere: the group concentrates
        w = sparser[t.param].clone()
        w.index_fill_(t.dim, t.idxs[weak:weak + 1], 0.0)
        sparser[t.param] = w
    assert group_regulariser(sparser, groups, 4.0, kind="relative")[0].item() < rel.item()


def test_zero_weakest_removes_exactly_the_lowest_norm_units():
    from metaprune.train.objectives import zero_weakest

    model, groups = _resnet8_groups()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    removed = [1] * len(groups)
    out = zero_weakest(params, groups, removed)
    for g in groups:
        before, after = g.norms(params).detach(), g.norms(out).detach()
        # one unit per group is gone; the others keep their weights except entries shared with units removed
        # in other groups (the next layer's input channels)
        assert int((after == 0).sum()) == 1
        assert int((after > 0).sum()) == g.units - 1 and (after <= before + 1e-6).all()
    x = torch.randn(4, 1, 8, 8)
    torch.func.functional_call(model, out, (x,)).sum().backward()
    assert params["conv1.weight"].grad.abs().sum() > 0


def test_meta_training_changes_only_the_metanet_and_saves_it(zoo, digits, tmp_path):
    before = {n: zoo.load(n).state_dict() for n in zoo.names("train")}
    out = meta_train(zoo, digits, SMALL_NET, QUICK, tmp_path / "m", device="cpu", progress=False)
    assert out["history"][0]["step"] == 0  # step 0 is the identity metanetwork: exactly the baseline
    assert out["history"][0]["pruned_acc"] == out["history"][0]["pruned_acc_base"]
    assert out["history"][-1]["step"] == 2
    moved = [p for n, p in out["metanet"].named_parameters() if "dec" in n and p.abs().sum() > 0]
    assert moved, "the decoders start at zero and must have learned something after two steps"
    for n, sd in before.items():  # zoo networks are read, never written
        assert all(torch.equal(v, zoo.load(n).state_dict()[k]) for k, v in sd.items())
    saved = tmp_path / "m"
    assert {"metanet.safetensors", "config.json", "zoo_split.json"} <= {p.name for p in saved.iterdir()}
    split = json.loads((saved / "zoo_split.json").read_text())
    assert {k: split[k] for k in ("train", "val", "heldout")} == zoo.split
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["best"]["step"] in (0, 2) and cfg["meta_optim"]["steps"] == 2
    net = load_metanet(saved)
    assert net.config["hidden"] == 8


def test_resume_continues_to_the_same_metanet_as_an_uninterrupted_run(zoo, digits, tmp_path):
    cfg = {**QUICK, "steps": 3, "nets_per_step": 2, "save_every": 1, "val_every": 0, "warmup_steps": 2}
    full = meta_train(zoo, digits, SMALL_NET, cfg, tmp_path / "full", device="cpu", progress=False)
    part = meta_train(zoo, digits, SMALL_NET, cfg, tmp_path / "cut", device="cpu", progress=False, stop_after=2)
    assert part["steps"] == 2 and not part["finished"]
    rest = meta_train(zoo, digits, SMALL_NET, cfg, tmp_path / "cut", device="cpu", progress=False, resume=True)
    assert rest["finished"] and rest["steps"] == 3
    a, b = full["metanet"].state_dict(), rest["metanet"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], part["metanet"].state_dict()[k]) for k in a)  # the third step did something
    assert (tmp_path / "cut" / "metanet.safetensors").exists()


def test_bad_meta_options_fail_with_the_key_named():
    with pytest.raises(ValueError, match="meta_optim.lam"):
        MetaConfig.from_dict({"lam": -1})
    with pytest.raises(ValueError, match="meta_optim.prune_loss"):
        MetaConfig.from_dict({"prune_loss": -1})
    with pytest.raises(ValueError, match="meta_optim.reg"):
        MetaConfig.from_dict({"reg": "l1"})
    with pytest.raises(ValueError, match="unknown meta_optim option"):
        MetaConfig.from_dict({"lr_typo": 1})


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(config_name="train_meta", overrides=overrides)


@pytest.mark.parametrize("experiment,data,hidden", [("resnet56_cifar10", "cifar10", 64), ("vgg19_cifar100", "cifar100", 64),
                                                    ("resnet50_imagenet", "imagenet", 16), ("vit_imagenet", "imagenet", 16)])
def test_experiment_presets_compose_and_validate(experiment, data, hidden):
    from omegaconf import OmegaConf

    from metaprune.metatrain import check_run_config

    cfg = OmegaConf.to_container(_compose([f"experiment={experiment}", "logger=none"]), resolve=True)
    assert cfg["name"] == experiment and cfg["data"]["name"] == data and cfg["metanet"]["hidden"] == hidden
    assert check_run_config(cfg).steps > 1000  # a full run, validated before any work
    over = OmegaConf.to_container(_compose([f"experiment={experiment}", "metanet.hidden=12", "meta_optim.lam=0.01"]))
    assert over["metanet"]["hidden"] == 12 and over["meta_optim"]["lam"] == 0.01


def test_default_config_is_the_digits_zoo_with_wandb_offline():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(_compose([]), resolve=True)
    assert cfg["data"]["name"] == "digits" and cfg["zoo"]["split"]["heldout_families"] == ["vgg"]
    assert cfg["logger"]["kind"] == "wandb" and cfg["logger"]["mode"] == "offline"


def _tiny_zoo_dir(tmp_path):
    import yaml

    (tmp_path / "zoo").mkdir(parents=True, exist_ok=True)
    (tmp_path / "zoo" / "tiny.yaml").write_text(yaml.safe_dump({**TINY, "root": str(TINY_ROOT.parent)}))
    return [f"hydra.searchpath=[file://{tmp_path}]", "zoo=tiny", *(f"optim.{k}={v}" for k, v in OPTIM.items()),
            "logger=none", "progress=false", "device=cpu"]


def test_train_meta_cli_runs_and_refuses_bad_values(zoo, tmp_path):
    base = [sys.executable, "train_meta.py", *_tiny_zoo_dir(tmp_path / "cfg"), f"out_root={tmp_path}"]
    bad = subprocess.run(base + ["meta_optim.alpha=0.5"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "meta_optim.alpha" in bad.stderr
    fam = subprocess.run(base + ["meta_optim.families=[nosuchnet]"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert fam.returncode == 2 and "meta_optim.families: ['nosuchnet'] not in the zoo" in fam.stderr
    ok = subprocess.run(base + ["meta_optim.steps=1", "meta_optim.nets_per_step=1", "meta_optim.batch_size=16",
                                "metanet.hidden=8", "metanet.layers=1", "name=cli"],
                        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "meta-val pruned acc" in ok.stdout and (tmp_path / "cli" / "metanet.safetensors").exists()


@pytest.mark.slow
def test_multirun_sweep_saves_one_metanet_per_job(zoo, tmp_path):
    cmd = [sys.executable, "train_meta.py", "-m", *_tiny_zoo_dir(tmp_path / "cfg"), f"out_root={tmp_path}",
           "metanet.hidden=4,8", "meta_optim.steps=1", "meta_optim.nets_per_step=1", "metanet.layers=1",
           f"hydra.sweep.dir={tmp_path / 'multirun'}", "name=sweep"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    hidden = sorted(json.loads((tmp_path / f"sweep-{i}" / "config.json").read_text())["metanet"]["hidden"] for i in (0, 1))
    assert hidden == [4, 8]


def test_every_meta_option_can_be_set_from_the_command_line():
    """Hydra refuses ``meta_optim.X=...`` for a key its preset lacks: each preset lists every MetaConfig option."""
    import dataclasses

    import yaml

    from metaprune.metatrain import MetaConfig

    for preset in sorted((REPO / "configs" / "meta_optim").glob("*.yaml")):
        missing = {f.name for f in dataclasses.fields(MetaConfig)} - set(yaml.safe_load(preset.read_text()))
        assert not missing, f"{preset.name} lacks {sorted(missing)}"


def test_fashion_mnist_direct_preset_is_the_published_recipe_plus_the_changes_the_proving_ground_kept():
    """``experiment=fashion_mnist_direct`` (the shipped Fashion-MNIST metanetwork's recipe) differs from
    ``experiment=fashion_mnist`` (the published recipe) only in the options the README's ablation names."""
    from omegaconf import OmegaConf

    from metaprune.metatrain import check_run_config

    ref = OmegaConf.to_container(_compose(["experiment=fashion_mnist", "logger=none"]), resolve=True)
    new = OmegaConf.to_container(_compose(["experiment=fashion_mnist_direct", "logger=none"]), resolve=True)
    changed = {k for k in new["meta_optim"] if new["meta_optim"][k] != ref["meta_optim"][k]}
    assert changed == {"steps", "lr", "prune_loss", "recalibrate_batches", "val_every", "val_recovery_steps",
                       "val_finetune_steps"}
    assert {k for k in new["metanet"] if new["metanet"][k] != ref["metanet"][k]} == {"scale"}
    assert new["zoo"] == ref["zoo"] and new["data"] == ref["data"] and new["name"] == "fashion_mnist_direct"
    cfg = check_run_config(new)
    assert cfg.recalibrate_batches == 20 and cfg.val_recovery_steps == 0 and cfg.val_global


def test_fashion_mnist_gain_preset_is_the_direct_recipe_with_the_gain_rewrite_and_its_objective():
    """``experiment=fashion_mnist_gain`` differs from ``fashion_mnist_direct`` only in the gain rewrite and the
    options that train it (README ablation, gain_s0-2), and passes the run's checks."""
    from omegaconf import OmegaConf

    from metaprune.metatrain import check_run_config

    base = OmegaConf.to_container(_compose(["experiment=fashion_mnist_direct", "logger=none"]), resolve=True)
    gain = OmegaConf.to_container(_compose(["experiment=fashion_mnist_gain", "logger=none"]), resolve=True)
    assert {k for k in gain["metanet"] if gain["metanet"][k] != base["metanet"][k]} == {"mode", "scale"}
    changed = {k for k in gain["meta_optim"] if gain["meta_optim"][k] != base["meta_optim"][k]}
    assert changed == {"lr", "task_loss", "lam", "prune_mask", "mask_temperature"}
    assert gain["metanet"]["mode"] == "gain" and gain["name"] == "fashion_mnist_gain"
    cfg = check_run_config(gain)
    assert cfg.prune_mask == "dynamic" and cfg.mask_temperature > 0 and cfg.recalibrate_batches == 20


def test_a_zoo_of_held_out_networks_only_is_built_but_never_meta_trained_on():
    """``zoo=fashion_mnist_fresh`` holds every family out (fresh seeds to evaluate on): ``zoo_only=true`` accepts
    it, meta-training refuses it before any work, naming the split."""
    from omegaconf import OmegaConf

    from metaprune.metatrain import check_run_config

    cfg = OmegaConf.to_container(_compose(["data=fashion_mnist", "zoo=fashion_mnist_fresh", "logger=none"]),
                                 resolve=True)
    with pytest.raises(ValueError, match="no meta-train networks"):
        check_run_config(cfg)
    check_run_config({**cfg, "zoo_only": True})
    seeds = {s for f in cfg["zoo"]["families"].values() for s in f["seeds"]}
    zoo = OmegaConf.load(REPO / "configs/zoo/fashion_mnist.yaml")
    zoo_seeds = {s for f in zoo["families"].values() for s in f["seeds"]}
    assert seeds and not seeds & zoo_seeds  # seeds no zoo member uses
