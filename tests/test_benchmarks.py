"""The committed benchmark results are complete and well-formed; the paper presets compose and run end to
end on the CIFAR-format fixture (a couple of steps only)."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _latest(pattern):
    files = sorted(RESULTS.glob(pattern))
    assert files, f"no committed {pattern} in {RESULTS}"
    return json.loads(files[-1].read_text())


def test_quality_results_cover_every_method_speedup_and_network():
    r = _latest("quality-digits-*.json")
    c = r["config"]
    for key in ("hardware", "versions", "config", "networks", "summary", "per_network"):
        assert key in r, key
    assert len(r["networks"]) >= 5 and len(r["per_network"]) == len(r["networks"]) * len(c["seeds"])
    for net, rec in r["per_network"].items():
        assert 0 <= rec["base_acc"] <= 1
        for method in c["methods"]:
            for s in c["speedups"]:
                cell = rec[method][str(s)]
                assert 0 <= cell["no_finetune"] <= 1 and 0 <= cell["finetuned"] <= 1, (net, method, s)
                assert cell["speedup"] == pytest.approx(float(s), rel=0.1)
                # equal budgets: every method trains the same number of epochs after receiving the network
                budget = c["budget_epochs"] if "budget_epochs" in c else c["pre_epochs"] + c["finetune_epochs"]
                assert cell["epochs_before_prune"] + cell["epochs_after_prune"] == budget
    for method in c["methods"]:
        assert set(r["summary"][method]) == {str(s) for s in c["speedups"]}


def _loadavg(cell):
    return len(cell["loadavg_before"]) == 3 and len(cell["loadavg_after"]) == 3


def test_latency_results_cover_four_models_three_targets_both_routes():
    r = json.loads((RESULTS / "latency-cpu.json").read_text())
    for key in ("device", "processor", "dtype", "batch_size", "input", "runs", "threads", "torch", "round_to",
                "command", "loadavg_start", "loadavg_end"):
        assert key in r, key
    assert r["batch_size"] >= 1 and r["runs"] >= 1
    cells = {(row["model"], row["target"]): row for row in r["rows"]}
    assert len(cells) == len(r["rows"])  # each (model, target) measured once
    models = ("resnet50", "mobilenet_v2", "densenet121", "vit_b_16")
    assert set(cells) == {(m, t) for m in models for t in (1.5, 2.0, 3.0)}
    for (model, target), row in cells.items():
        macs, lat = row["macs_route"], row["latency_route"]
        assert macs["macs_speedup"] == pytest.approx(target, rel=0.02), (model, target)
        assert macs["latency_speedup"] > 0 and macs["base_ms"] > 0 and _loadavg(macs)
        assert lat["trials"] and all(_loadavg(t) for t in lat["trials"]), (model, target)
        if "unreachable" in lat:  # recorded, not hidden
            assert "not reachable" in lat["unreachable"]
        else:
            assert lat["macs_speedup"] > 1 and lat["latency_speedup"] > 0 and _loadavg(lat)


def test_latency_zoo_results_give_both_routes_the_same_finetuning():
    r = json.loads((RESULTS / "latency_zoo-digits.json").read_text())
    c = r["config"]
    for key in ("hardware", "versions", "config", "networks", "per_network", "summary", "loadavg_start", "loadavg_end"):
        assert key in r, key
    assert c["split"] == "heldout" and len(r["networks"]) == 12 and set(r["per_network"]) == set(r["networks"])
    assert c["importance"] == "l2" and c["latency"]["batch_size"] >= 1 and c["finetune"]["epochs"] >= 1
    for net, rec in r["per_network"].items():
        assert 0 <= rec["base_acc"] <= 1
        for s in map(str, c["targets"]):
            macs, lat = rec["macs"][s], rec["latency"][s]
            assert macs["finetune"] == lat["finetune"] == c["finetune"], (net, s)  # equal finetuning budget
            for cell in (macs, lat):
                assert 0 <= cell["test_acc"] <= 1 and 0 <= cell["no_finetune_acc"] <= 1
                assert cell["latency_speedup"] > 0 and _loadavg(cell)
            assert macs["macs_speedup"] == pytest.approx(float(s), rel=0.1), (net, s)
            assert isinstance(lat["reached"], bool) and lat["search"]
            if not lat["reached"]:  # the fastest candidate measured, short of the target
                assert lat["search_latency_speedup"] < float(s)
    for route in ("macs", "latency"):
        assert set(r["summary"][route]) == {str(s) for s in c["targets"]}
        for cell in r["summary"][route].values():
            assert cell["test_acc"]["n"] == len(r["networks"]) and 0 <= cell["reached"] <= len(r["networks"])


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    from metaprune.cli import to_dict

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return to_dict(compose("quality", overrides=overrides))


@pytest.mark.parametrize("experiment,data", [("resnet56_cifar10", "cifar10"), ("vgg19_cifar100", "cifar100")])
def test_paper_presets_run_on_cifar_fixture(tmp_path, experiment, data):
    import sys

    from metaprune.data import write_cifar_fixture

    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    root = write_cifar_fixture(tmp_path / "data", n_train=60, n_test=20, variant=data)
    c = _compose([f"experiment={experiment}"])
    assert c["data"]["name"] == data and c["name"] == experiment
    assert c["metanet_checkpoint"].endswith(experiment)
    # shrink the paper-scale zoo and budget to a couple of steps on the fixture
    c["data"].update(root=str(root), val_size=10, num_workers=0, batch_size=16)
    c["zoo"].update(root=str(tmp_path / "zoo"), families={"resnet": {"archs": [{"depth": 8, "width": 4}],
                                                                      "seeds": [0, 1, 2]}},
                    split={"seed": 0, "val": 0.0, "heldout": 0.34, "heldout_families": []})
    c["optim"].update(epochs=1)
    c.update(methods=["random", "depgraph", "depgraph_sl"], speedups=[2.0], finetune_epochs=0, pre_epochs=1,
             out_dir=str(tmp_path / "results"), tag="fixture", cells_dir=str(tmp_path / "cells"))
    r = quality.run(c)
    assert set(r["summary"]) == {"random", "depgraph", "depgraph_sl"}
    assert (tmp_path / "results" / "quality-fixture.json").exists()
    assert (tmp_path / "results" / "quality-fixture.png").exists()
    # finished cells are kept: a rerun (or a second shard) reuses them instead of training again
    def no_training(*a, **k):
        raise AssertionError("a finished cell was computed again")

    computed = quality.run_method
    quality.run_method = no_training
    try:
        again = quality.run({**c, "shard": 1, "num_shards": 2})
    finally:
        quality.run_method = computed
    assert again["per_network"] == r["per_network"]
    # a method added later is the only one computed; the others' cells (and their numbers) are reused
    ran = []
    quality.run_method = lambda *a, **k: ran.append(a[5]) or computed(*a, **k)
    try:
        more = quality.run({**c, "methods": ["random", "depgraph", "depgraph_sl", "depgraph_local"]})
    finally:
        quality.run_method = computed
    assert set(ran) == {"depgraph_local"} and more["summary"]["depgraph"] == r["summary"]["depgraph"]
    # another speedup is computed alone; the finished ones are kept
    ran.clear()
    quality.run_method = lambda *a, **k: ran.append(a[6]) or computed(*a, **k)
    try:
        wider = quality.run({**c, "speedups": [2.0, 3.0]})
    finally:
        quality.run_method = computed
    assert ran == [[3.0]] * len(ran) and len(ran) == 3 * len(c["seeds"]) * len(wider["networks"])
    assert wider["summary"]["depgraph"]["2.0"] == r["summary"]["depgraph"]["2.0"]
    # the table reproduces: the same cells computed afresh (another cells_dir) give the same numbers
    fresh = quality.run({**c, "cells_dir": str(tmp_path / "cells-again"), "tag": "again"})
    assert fresh["summary"] == r["summary"] and fresh["paired"] == r["paired"]
    # cells_from: a committed result's cells, read back into an empty cells_dir, reproduce it without training
    quality.run_method = no_training
    try:
        reread = quality.run({**c, "cells_dir": str(tmp_path / "cells-read"), "tag": "reread",
                              "cells_from": [str(tmp_path / "results" / "quality-fixture.json")]})
    finally:
        quality.run_method = computed
    assert reread["summary"] == r["summary"] and reread["paired"] == r["paired"]
    with pytest.raises(ValueError, match="cells_from: .*other shared settings"):  # another budget: not its cells
        quality.run({**c, "finetune_epochs": 1, "cells_from": [str(tmp_path / "results" / "quality-fixture.json")]})
    # the result goes to the logger as one benchmark run: means, paired differences and the JSON as an artifact
    import metaprune.logging as mlog

    seen = {}

    class Recorder(mlog.Logger):
        def summary(self, metrics):
            seen["summary"] = metrics

        def artifact(self, path, name, kind="model"):
            seen["artifact"] = (path, kind)

    made = []
    orig = mlog.make_logger
    mlog.make_logger = lambda cfg, **kw: made.append(kw) or Recorder()
    try:
        quality.log_result(c, r)
    finally:
        mlog.make_logger = orig
    assert made[0]["job_type"] == "benchmark" and Path(seen["artifact"][0]).is_file()
    assert seen["summary"]["depgraph/2.0x/finetuned"] == r["summary"]["depgraph"]["2.0"]["finetuned"]["mean"]
    # report_only writes the table from what is finished and computes nothing
    with pytest.raises(ValueError, match="report_only: no network"):
        quality.run({**c, "speedups": [2.0, 4.0], "report_only": True})
    # a families filter reports on those zoo families only (e.g. where a per-family metanetwork has encoders)
    assert quality.run({**c, "families": ["resnet"], "report_only": True})["summary"] == r["summary"]
    with pytest.raises(ValueError, match=r"families: \['nosuchnet'\] not in the zoo"):
        quality.run({**c, "families": ["nosuchnet"]})


def _bench(name):
    import importlib
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    return importlib.import_module(name)


@pytest.mark.slow
def test_latency_script_records_batch_and_load_per_measurement(tmp_path, monkeypatch):
    latency = _bench("latency")
    monkeypatch.setattr(latency, "RESULTS", tmp_path)
    latency.main(["--models", "mobilenet_v3_small", "--targets", "2", "--batch", "2", "--runs", "1", "--size", "32"])
    r = json.loads((tmp_path / "latency-cpu.json").read_text())
    assert r["batch_size"] == 2 and r["input"] == [3, 32, 32] and (tmp_path / "latency-cpu.png").is_file()
    (row,) = r["rows"]
    assert row["macs_route"]["macs_speedup"] == pytest.approx(2.0, rel=0.02) and _loadavg(row["macs_route"])
    assert all(_loadavg(t) and t["macs_speedup"] > 1 for t in row["latency_route"]["trials"])
    with pytest.raises(SystemExit, match="different"):  # rows of another batch size are never mixed in
        latency.main(["--models", "mobilenet_v3_small", "--targets", "2", "--batch", "3", "--size", "32", "--merge"])


@pytest.mark.slow
def test_latency_zoo_script_gives_both_routes_one_budget(tmp_path):
    from test_zoo import tiny_zoo  # the tests' own small zoo (the digits zoo is built by train_meta.py, not shipped)

    zoo = _bench("latency_zoo")
    r = zoo.main(["--zoo", str(tiny_zoo().root), "--max-networks", "1", "--targets", "1.5", "--epochs", "1",
                  "--runs", "1", "--batch", "64", "--out", str(tmp_path)])
    (net,) = r["per_network"].values()
    assert net["macs"]["1.5"]["finetune"] == net["latency"]["1.5"]["finetune"] == r["config"]["finetune"]
    # one rounding for both routes: the device's measured multiple, or the smaller one a narrow net needs for 1.5x
    assert net["macs"]["1.5"]["round_to"] == net["latency"]["1.5"]["round_to"] <= r["config"]["round_to"]
    assert r["summary"]["latency"]["1.5"]["test_acc"]["n"] == 1 and (tmp_path / "latency_zoo-digits.png").is_file()


def test_quality_paired_differences_are_per_network_with_interval_and_wins():
    quality = _bench("quality")
    per_net, rows = {}, {"n0": (0.80, 0.70), "n1": (0.90, 0.86), "n2": (0.60, 0.61), "n3": (0.75, 0.65)}
    for net, (a, b) in rows.items():
        for seed, jitter in ((0, 0.0), (1, 0.02)):  # two pruning seeds, averaged per network
            per_net[f"{net}/seed{seed}"] = {"family": "resnet" if net < "n2" else "vgg", "base_acc": 0.9,
                                            "depgraph": {"2.0": {"finetuned": a + jitter}},
                                            "random": {"2.0": {"finetuned": b + jitter}}}
    p = quality.paired(per_net, "depgraph", "random", 2.0, "finetuned")
    diffs = [0.10, 0.04, -0.01, 0.10]
    assert p["n"] == 4 and p["wins"] == 3 and p["losses"] == 1
    assert p["mean"] == pytest.approx(sum(diffs) / 4)
    sd = (sum((d - p["mean"]) ** 2 for d in diffs) / 3) ** 0.5
    assert p["ci95"][1] - p["mean"] == pytest.approx(3.182 * sd / 2, rel=1e-3)  # t(3 dof) * sd / sqrt(4)
    assert p["separated"] == (p["ci95"][0] > 0)
    fam = quality.by_family(per_net, ["depgraph", "random"], [2.0])
    assert fam["resnet"]["networks"] == 2 and fam["vgg"]["summary"]["depgraph"]["2.0"]["finetuned"]["n"] == 4


def test_metanet_seeds_summary_reads_the_sign_over_seeds():
    seeds = _bench("metanet_seeds")

    def result(mean, lo, hi):
        cell = {"mean": mean, "ci95": [lo, hi], "wins": 3, "losses": 12, "n": 15}
        return {"config": {"metanet_checkpoint": "m"},
                "paired": {"metaprune - depgraph": {"3.0": {"finetuned": cell, "no_finetune": cell}}}}

    s = seeds.summarise([result(-0.09, -0.17, -0.01), result(-0.05, -0.12, 0.02), result(-0.07, -0.10, -0.04)],
                        ["s0", "s1", "s2"])
    row = s["pairs"]["metaprune - depgraph"]["3.0"]["finetuned"]
    assert row["mean_of_means"] == pytest.approx(-0.07) and row["std_of_means"] == pytest.approx(0.02)
    assert row["same_sign"] and row["separated_below_zero"] == 2 and row["separated_above_zero"] == 0
    assert "-7.0 ± 2.0 | yes |" in seeds.markdown(s)


def test_quality_pool_reads_two_network_sets_as_one_and_refuses_other_protocols(tmp_path, capsys):
    """benchmarks/quality_pool.py: two results on disjoint networks pool into the paired differences over all of
    them (the same numbers quality.py gives one run holding every network); results of another protocol, or that
    share a network, are refused with one error naming the setting or network, and nothing is written."""
    pool = _bench("quality_pool")
    quality = _bench("quality")

    def result(zoo, nets):
        per_net = {f"{n}/seed0": {"family": "resnet", "base_acc": 0.9, "depgraph": {"3.0": {"finetuned": a}},
                                  "depgraph_val": {"3.0": {"finetuned": b}}} for n, (a, b) in nets.items()}
        cfg = {"zoo": {"name": zoo}, "tag": zoo, "methods": ["depgraph", "depgraph_val"], "speedups": [3.0],
               "seeds": [0], "ranking_margin": 0.077}
        return {"benchmark": "quality", "config": cfg, "networks": list(nets), "per_network": per_net,
                "method_seconds": {"depgraph": 1.0, "depgraph_val": 2.0}}

    a = result("fresh", {"r7": (0.50, 0.80), "r8": (0.80, 0.82)})
    b = result("fresh2", {"r9": (0.70, 0.69), "r10": (0.40, 0.78)})
    paths = []
    for r in (a, b):
        paths.append(tmp_path / f"{r['config']['zoo']['name']}.json")
        paths[-1].write_text(json.dumps(r))
    assert pool.main([*map(str, paths), "--tag", "pooled", "--out-dir", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "quality-pooled.json").read_text())
    both = {**a["per_network"], **b["per_network"]}
    want = quality.paired(both, "depgraph_val", "depgraph", 3.0, "finetuned")
    got = out["paired"]["depgraph_val - depgraph"]["3.0"]["finetuned"]
    assert got == want and got["n"] == 4 and (got["wins"], got["losses"]) == (3, 1)
    assert out["pooled_from"] == list(map(str, paths)) and out["method_seconds"]["depgraph_val"] == 4.0
    assert (tmp_path / "quality-pooled.png").is_file()

    other = {**b, "config": {**b["config"], "ranking_margin": 0.0}}
    paths[1].write_text(json.dumps(other))
    assert pool.main([*map(str, paths), "--tag", "refused", "--out-dir", str(tmp_path)]) == 2
    assert "'ranking_margin' differs" in capsys.readouterr().err
    paths[1].write_text(json.dumps(a | {"config": {**a["config"], "zoo": {"name": "fresh2"}}}))
    assert pool.main([*map(str, paths), "--tag", "refused", "--out-dir", str(tmp_path)]) == 2
    assert "r7/seed0 is already in" in capsys.readouterr().err
    paths[1].write_text("[1, 2]")
    assert pool.main([*map(str, paths), "--tag", "refused", "--out-dir", str(tmp_path)]) == 2
    assert "not a quality.py result" in capsys.readouterr().err
    assert not list(tmp_path.glob("quality-refused*"))
