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
                assert cell["epochs_before_prune"] + cell["epochs_after_prune"] == c["budget_epochs"]
    for method in c["methods"]:
        assert set(r["summary"][method]) == {str(s) for s in c["speedups"]}


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
    c.update(methods=["random", "depgraph", "depgraph_sl"], speedups=[2.0], budget_epochs=1, pre_epochs=1,
             out_dir=str(tmp_path / "results"), tag="fixture")
    r = quality.run(c)
    assert set(r["summary"]) == {"random", "depgraph", "depgraph_sl"}
    assert (tmp_path / "results" / "quality-fixture.json").exists()
    assert (tmp_path / "results" / "quality-fixture.png").exists()
