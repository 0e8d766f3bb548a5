"""Ranking by architecture (``prune.global_pruning=attention``, quality.py's ``depgraph_attention`` and
``metaprune_global=attention``): global ranking for networks with attention layers, per-layer ranking for the others,
decided from the DepGraph groups alone (no candidate is pruned or scored)."""
import copy
import os
import sys
from pathlib import Path

import pytest
import torch

from metaprune.cli import UsageError
from metaprune.models import build
from metaprune.prune import prune
from metaprune.prune.pipeline import run_prune
from metaprune.prune.report import format_report

sys.path.insert(0, os.path.dirname(__file__))
from test_prune_routes import _cfg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _pruned(model, ranking):
    net = copy.deepcopy(model)
    res = prune(net, torch.randn(1, 1, 8, 8), target_speedup=2.0, importance="l2_max", global_pruning=ranking)
    return net, res


@pytest.mark.parametrize("name,args,ranked_globally", [
    ("vit", dict(image_size=8, patch_size=2, depth=2, dim=32, heads=4, num_classes=10, in_channels=1), True),
    ("resnet", dict(depth=8, width=8, num_classes=10, in_channels=1), False),
])
def test_attention_networks_are_ranked_globally_and_the_others_per_layer(name, args, ranked_globally):
    """The rule prunes a transformer exactly as global ranking does and a CNN exactly as per-layer ranking does
    (same channels removed, same outputs), and records which ranking it used."""
    torch.manual_seed(0)
    model = build(name, **args).eval()
    by_rule, res = _pruned(model, "attention")
    same, ref = _pruned(model, ranked_globally)
    other, _ = _pruned(model, not ranked_globally)
    assert res.global_pruning is ranked_globally and res.removed == ref.removed and res.channels == ref.channels
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(by_rule(x), same(x))
        assert by_rule(x).shape == other(x).shape == (4, 10)
    assert res.speedup == pytest.approx(ref.speedup)


def test_a_ranking_that_is_neither_a_flag_nor_a_rule_is_refused_and_the_model_untouched():
    model = build("resnet", depth=8, width=8, num_classes=10, in_channels=1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="global_pruning='transformers'"):
        prune(model, torch.randn(1, 1, 8, 8), target_speedup=2.0, global_pruning="transformers")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prune_py_ranks_by_architecture_and_says_so(tmp_path, digits):
    r = run_prune(_cfg(tmp_path, "prune.global_pruning=attention", "prune.importance=l2_max", "target.speedup=2.0",
                       "finetune.epochs=1"), data=digits, progress=False)
    assert r["pruning"]["global_pruning"] is False and r["speedup"] >= 1.9  # the default model is a CNN
    assert "per-layer ranking (by architecture: prune.global_pruning=attention)" in format_report(r)
    assert (tmp_path / "out" / "report.json").is_file()
    # the routes through torch-pruning's own pruner take true or false: refused before anything is written
    for bad in (["prune.importance=obs"], ["stage=init", "model.checkpoint=null", "model.name=resnet"]):
        out = tmp_path / bad[0].replace("=", "_")
        with pytest.raises(UsageError, match="prune.global_pruning=attention"):
            run_prune(_cfg(out, "prune.global_pruning=attention", *bad), data=digits, progress=False)
        assert not (out / "out").exists()


def test_quality_ranks_depgraph_attention_and_metaprune_by_architecture(tmp_path):
    """quality.py: ``depgraph_attention`` prunes with the rule, ``metaprune_global=attention`` gives the metanetwork
    arms the same rule and its own cell key, it is their matched baseline in the paired table, and any other
    ``metaprune_global`` is refused."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    c = {"importance": "l2_max", "metaprune_global": "attention", "metanet_checkpoint": str(tmp_path)}
    assert quality._criterion("depgraph_attention", c) == ("l2_max", "attention")
    assert quality._criterion("metaprune_identity", c) == ("l2_max", "attention")
    key = lambda g: quality._cell_path(tmp_path, "n", 0, "metaprune_identity", {**c, "metaprune_global": g})  # noqa
    assert len({key("attention"), key("val"), key(True), key(False)}) == 4
    with pytest.raises(ValueError, match="metaprune_global='architecture'"):
        quality._metaprune_ranking({"metaprune_global": "architecture"})
    per_net = {f"n{i}/seed0": {"family": "vit", "base_acc": 0.9, "metaprune_direct": {"3.0": {"finetuned": a}},
                               "depgraph_attention": {"3.0": {"finetuned": b}}}
               for i, (a, b) in enumerate([(0.80, 0.78), (0.70, 0.71), (0.60, 0.55)])}
    diffs = quality.comparisons(per_net, ["depgraph_attention", "metaprune_direct"], [3.0])
    assert diffs["metaprune_direct - depgraph_attention"]["3.0"]["finetuned"]["wins"] == 2
