"""Zoo: members trained once, indexed with accuracy/MACs/params, split by network, resumable."""
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from metaprune.zoo import build_zoo, load_zoo, plan_members, split_members

DATA = {"name": "digits", "seed": 0, "size": 8, "batch_size": 128, "num_workers": 0}
OPTIM = {"epochs": 1, "optimizer": "sgd", "lr": 0.05, "amp": False}
TINY = {
    "name": "tiny",
    "families": {
        "resnet": {"archs": [{"depth": 8, "width": 4}], "seeds": [0, 1, 2]},
        "vit": {"archs": [{"patch_size": 4, "depth": 1, "dim": 8, "heads": 2}], "seeds": [0, 1],
                "optim": {"optimizer": "adamw", "lr": 3e-3}},
        "vgg": {"archs": [{"depth": 11, "width": 4}], "seeds": [0]},
    },
    "split": {"seed": 0, "val": 0.34, "heldout": 0.34, "heldout_families": ["vgg"]},
}


# One tiny zoo shared by the zoo and meta-training tests (and reused across runs: that is the zoo's job).
TINY_ROOT = Path(tempfile.gettempdir()) / f"metaprune-tests-{os.getuid()}" / "tiny-zoo"


def tiny_zoo():
    return build_zoo(TINY, DATA, OPTIM, root=TINY_ROOT, progress=False, log=None)


@pytest.fixture(scope="module")
def zoo():
    return tiny_zoo()


def test_members_are_indexed_with_their_numbers_and_load(zoo):
    index = json.loads((zoo.root / "index.json").read_text())
    assert len(index["members"]) == 6
    for name, m in index["members"].items():
        assert 0.0 <= m["val_acc"] <= 1.0 and m["macs"] > 0 and m["params"] > 0
        model = zoo.load(name)
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
        spec = json.loads((zoo.root / name / "spec.json").read_text())
        assert spec["extra"]["recipe"]["seed"] == m["seed"]
    # the members learned something (10 classes: chance is 10%)
    assert max(m["val_acc"] for m in index["members"].values()) > 0.2


def test_split_is_by_network_and_holds_out_whole_families(zoo):
    split = zoo.split
    names = [n for s in split.values() for n in s]
    assert sorted(names) == sorted(zoo.members) and len(set(names)) == len(names)
    assert all(zoo.members[n]["family"] != "vgg" for n in split["train"] + split["val"])
    assert zoo.names("heldout", families=["vgg"]) == ["vgg-d11-w4-s0"]
    # a family of 3+ networks contributes to every split; a smaller one only to meta-train
    assert all(zoo.names(s, families=["resnet"]) for s in ("train", "val", "heldout"))
    assert len(zoo.names("train", families=["vit"])) == 2
    assert load_zoo(zoo.root).split == split


def test_rebuild_reuses_finished_members_and_retrains_missing_or_changed(zoo, tmp_path):
    root = tmp_path / "tiny"
    shutil.copytree(zoo.root, root)
    lines = []
    mtimes = {n: (root / n / "model.safetensors").stat().st_mtime_ns for n in zoo.members}
    shutil.rmtree(root / "vgg-d11-w4-s0")  # as if interrupted before this member finished
    again = build_zoo(TINY, DATA, OPTIM, root=root, progress=False, log=lines.append)
    assert "1 trained, 5 reused" in lines[0]
    assert all((root / n / "model.safetensors").stat().st_mtime_ns == t for n, t in mtimes.items()
               if n != "vgg-d11-w4-s0")
    assert again.split == zoo.split
    changed = {**TINY, "families": {"vgg": TINY["families"]["vgg"], "resnet": TINY["families"]["resnet"]},
               "split": {"heldout_families": ["vgg"]}}
    changed["families"]["vgg"] = {**changed["families"]["vgg"], "optim": {"lr": 0.02}}
    build_zoo(changed, DATA, OPTIM, root=root, progress=False, log=lines.append)
    assert "1 trained, 3 reused" in lines[1]  # a different recipe is not reused


def test_a_zoo_grown_with_new_seeds_copies_the_old_members_and_keeps_its_val_and_held_out_networks(zoo, tmp_path):
    """``reuse_from`` + ``split.train_seeds``: the grown zoo trains only the new seeds' members, copies the rest
    bit for bit from the zoo it grows from (which stays untouched), and only its meta-train split grows."""
    grown_cfg = {**TINY, "name": "grown", "reuse_from": [str(zoo.root)],
                 "families": {**TINY["families"], "resnet": {**TINY["families"]["resnet"], "seeds": [0, 1, 2, 3]}},
                 "split": {**TINY["split"], "train_seeds": [3]}}
    before = {n: (zoo.root / n / "model.safetensors").read_bytes() for n in zoo.members}
    lines = []
    grown = build_zoo(grown_cfg, DATA, OPTIM, root=tmp_path / "grown", progress=False, log=lines.append)
    assert "7 members (1 trained, 6 reused)" in lines[0]
    assert grown.split["val"] == zoo.split["val"] and grown.split["heldout"] == zoo.split["heldout"]
    assert grown.split["train"] == sorted(zoo.split["train"] + ["resnet-d8-w4-s3"])
    for n, raw in before.items():
        assert (grown.root / n / "model.safetensors").read_bytes() == raw
        assert (zoo.root / n / "model.safetensors").read_bytes() == raw  # the source zoo untouched
    assert grown.members["resnet-d8-w4-s0"]["val_acc"] == zoo.members["resnet-d8-w4-s0"]["val_acc"]
    assert not list(grown.root.glob(".*.copy"))  # no half-copied member left behind
    # a member whose recipe differs in the source is trained, not copied
    changed = {**grown_cfg, "families": {**grown_cfg["families"], "vgg": {**TINY["families"]["vgg"],
                                                                             "optim": {"lr": 0.02}}}}
    build_zoo(changed, DATA, OPTIM, root=tmp_path / "changed", progress=False, log=lines.append)
    assert "7 members (2 trained, 5 reused)" in lines[1]
    with pytest.raises(ValueError, match="zoo.reuse_from: .*missing"):
        build_zoo({**grown_cfg, "reuse_from": [str(tmp_path / "missing")]}, DATA, OPTIM, root=tmp_path / "x",
                  progress=False, log=None)
    with pytest.raises(ValueError, match="zoo.reuse_from=.*list"):
        build_zoo({**grown_cfg, "reuse_from": str(zoo.root)}, DATA, OPTIM, root=tmp_path / "x", progress=False,
                  log=None)
    with pytest.raises(ValueError, match="own directory"):
        build_zoo({**grown_cfg, "reuse_from": [str(tmp_path / "grown")]}, DATA, OPTIM, root=tmp_path / "grown",
                  progress=False, log=None)
    with pytest.raises(ValueError, match="zoo.split.train_seeds"):
        split_members(plan_members(TINY, OPTIM), {"train_seeds": "3"})
    assert not (tmp_path / "x").exists()


def test_bad_zoo_configs_fail_with_the_key_named():
    members = plan_members(TINY, OPTIM)
    with pytest.raises(ValueError, match="heldout_families"):
        split_members(members, {"heldout_families": ["mlp"]})
    with pytest.raises(ValueError, match="zoo.split"):
        split_members(members, {"val": 0.6, "heldout": 0.5})
    with pytest.raises(ValueError, match="zoo.families.resnet.seeds"):
        plan_members({"families": {"resnet": {"archs": [{"depth": 8}]}}}, OPTIM)
    evaluation = split_members(members, {"heldout_families": ["vgg", "resnet", "vit"]})  # every family held out
    assert not evaluation["train"] and not evaluation["val"] and len(evaluation["heldout"]) == len(members)


def test_shards_train_disjoint_members_and_the_index_waits_for_all(zoo, tmp_path):
    """Two shards build one zoo: neither retrains the other's members, the index appears only when complete,
    and the result equals an unsharded build (same members, same weights reused)."""
    root, lines = tmp_path / "sharded", []
    for n in ("resnet-d8-w4-s0", "resnet-d8-w4-s1", "vit-d1-c8-h2-p4-s0"):  # pretend some finished earlier
        shutil.copytree(zoo.root / n, root / n)
    first = build_zoo({**TINY, "shard": 0, "num_shards": 2}, DATA, OPTIM, root=root, progress=False,
                      log=lines.append)
    assert first is None and not (root / "index.json").exists()
    # shard 0 owns plan indices 0, 2, 4: resnet s0 was there, resnet s2 and vit s1 are trained
    assert "no index written" in lines[0] and "2 trained" in lines[0] and "vgg-d11-w4-s0" in lines[0]
    done = build_zoo({**TINY, "shard": 1, "num_shards": 2}, DATA, OPTIM, root=root, progress=False, log=lines.append)
    assert "1 trained, 5 reused" in lines[1]  # shard 1 owns 1, 3, 5: only vgg (5) was missing
    assert sorted(done.members) == sorted(zoo.members) and done.split == zoo.split
    assert "shard" not in json.loads((root / "index.json").read_text())["config"]
    with pytest.raises(ValueError, match="zoo.shard=2"):
        build_zoo({**TINY, "shard": 2, "num_shards": 2}, DATA, OPTIM, root=root, progress=False, log=None)


def test_zoo_report_publishes_index_and_family_summary(zoo, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import zoo_report

    r = zoo_report.main([str(zoo.root), "--out-dir", str(tmp_path)])
    written = json.loads((tmp_path / "zoo-tiny.json").read_text())
    assert written["families"]["resnet"]["members"] == 3 and written["families"]["vgg"]["splits"]["heldout"] == 1
    accs = [m["test_acc"] for m in zoo.members.values() if m["family"] == "resnet"]
    assert r["families"]["resnet"]["test_acc_max"] == max(accs)
    assert (tmp_path / "zoo-tiny.png").stat().st_size > 1000 and r["complete"]

    # an unfinished zoo (no index yet): planned from its config, finished members reported, missing ones named
    import yaml

    part = tmp_path / "part"
    for n in ("resnet-d8-w4-s0", "vgg-d11-w4-s0"):
        shutil.copytree(zoo.root / n, part / n)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    r = zoo_report.main([str(part), "--config", str(tmp_path / "tiny.yaml"), "--out-dir", str(tmp_path / "o")])
    assert not r["complete"] and len(r["missing"]) == 4 and sorted(r["members"]) == ["resnet-d8-w4-s0", "vgg-d11-w4-s0"]
    assert r["members"]["vgg-d11-w4-s0"]["split"] == "heldout"
    assert r["members"]["resnet-d8-w4-s0"]["test_acc"] == zoo.members["resnet-d8-w4-s0"]["test_acc"]


def test_a_member_trains_bit_identically_from_its_seed():
    from metaprune.train.network import train_network

    args = ("resnet", {"depth": 8, "width": 4}, DATA, OPTIM)
    a, _ = train_network(*args, seed=3, device="cpu", progress=False)
    b, _ = train_network(*args, seed=3, device="cpu", progress=False)
    c, _ = train_network(*args, seed=4, device="cpu", progress=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_the_committed_fashion_mnist_zoo_meets_its_spec():
    """33 networks, 5 families, split by network with a whole family held out; every member rebuilds safely."""
    root = Path(__file__).resolve().parents[1] / "checkpoints" / "zoo" / "fashion_mnist"
    zoo = load_zoo(root)
    fams = {m["family"] for m in zoo.members.values()}
    assert len(zoo) >= 32 and len(fams) >= 5
    assert len(zoo.split["val"]) >= 6 and len(zoo.split["heldout"]) >= 10
    held_whole = [f for f in fams if not zoo.names("train", families=[f]) and not zoo.names("val", families=[f])]
    assert held_whole == ["vgg"]
    assert zoo.index["data"]["train_subset"] == 20000
    for name, m in zoo.members.items():
        assert m["test_acc"] > 0.8, name  # realistic for the architecture, nowhere near chance
        model = zoo.load(name)
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name,others", [("fashion_mnist_fresh", ()), ("fashion_mnist_fresh2", ("fashion_mnist_fresh",)),
                                         ("fashion_mnist_fresh3", ("fashion_mnist_fresh", "fashion_mnist_fresh2"))])
def test_the_committed_fresh_seed_zoo_is_held_out_and_trained_like_the_zoo(name, others):
    """``fashion_mnist_fresh`` / ``_fresh2`` / ``_fresh3``: the zoo's held-out architectures of every family, trained
    by the same recipe with seeds the zoo (and the earlier fresh sets) never uses, every member held out (evaluation
    zoos: README, "Networks no zoo holds", "A ranking choice with a margin", "A ranking rule by architecture")."""
    repo = Path(__file__).resolve().parents[1]
    zoo, main = load_zoo(repo / "checkpoints/zoo" / name), load_zoo(repo / "checkpoints/zoo/fashion_mnist")
    for other in others:
        used = {m["seed"] for m in load_zoo(repo / "checkpoints/zoo" / other).members.values()}
        assert not used & {m["seed"] for m in zoo.members.values()}
    assert len(zoo) == 10 and zoo.split["heldout"] == sorted(zoo.members) and not zoo.split["train"]
    assert {m["family"] for m in zoo.members.values()} == {m["family"] for m in main.members.values()}
    assert zoo.index["data"] == main.index["data"]
    main_archs = {(m["model"], json.dumps(m["args"], sort_keys=True)) for m in main.members.values()}
    for name, m in zoo.members.items():
        assert (m["model"], json.dumps(m["args"], sort_keys=True)) in main_archs, name
        assert m["seed"] not in {x["seed"] for x in main.members.values()} and m["test_acc"] > 0.8, name


def test_the_committed_grown_zoo_keeps_the_zoos_val_and_held_out_networks():
    """``fashion_mnist_more``: the zoo plus seeds 3 and 4 of every ResNet, MobileNetV2 and DenseNet architecture, all
    meta-train; the zoo's own members are its members bit for bit, and meta-val and held-out are unchanged."""
    repo = Path(__file__).resolve().parents[1]
    grown, main = load_zoo(repo / "checkpoints/zoo/fashion_mnist_more"), load_zoo(repo / "checkpoints/zoo/fashion_mnist")
    assert grown.split["val"] == main.split["val"] and grown.split["heldout"] == main.split["heldout"]
    new = sorted(set(grown.members) - set(main.members))
    assert len(new) == 10 and grown.split["train"] == sorted(main.split["train"] + new)
    assert {grown.members[n]["family"] for n in new} == {"resnet", "mobilenet_v2", "densenet"}
    for n in new:
        assert grown.members[n]["seed"] in (3, 4) and grown.members[n]["test_acc"] > 0.8, n
        assert grown.load(n)(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    for n in main.members:
        assert (grown.root / n / "model.safetensors").read_bytes() == (main.root / n / "model.safetensors").read_bytes()
