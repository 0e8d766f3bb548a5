"""Global or per-layer ranking chosen per network on val (``prune.global_pruning=val``, quality.py's
``depgraph_val`` and ``metaprune_global=val``): the better candidate on val is kept, nothing else changes."""
import copy
import os
import sys
from pathlib import Path

import pytest
import torch

from metaprune.cli import UsageError
from metaprune.prune import prune
from metaprune.prune.pipeline import run_prune
from metaprune.prune.ranking import prune_ranked_on_val
from metaprune.prune.report import format_report
from metaprune.train import evaluate, ranking_scorer, recalibrate_norms
from metaprune.train.loop import RECALIBRATE_BATCHES

sys.path.insert(0, os.path.dirname(__file__))
from test_prune_routes import _cfg  # noqa: E402
from test_zoo import tiny_zoo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zoo():
    return tiny_zoo()


def _to(speedup, x):
    return lambda net, g: prune(net, x, target_speedup=speedup, importance="l2_max", global_pruning=g)


def _val(data):
    return ranking_scorer(data, 64)


def test_the_ranking_with_the_higher_val_accuracy_is_kept_and_the_network_is_untouched(zoo, digits):
    x = digits.example_inputs()
    val = digits.loader("val", 512, shuffle=False)
    for name in zoo.names("heldout") + zoo.names("val"):
        model = zoo.load(name)
        before = copy.deepcopy(model.state_dict())
        net, result, rec = prune_ranked_on_val(model, _to(3.0, x), _val(digits))
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is untouched
        scores = rec["val_acc"]
        assert set(scores) == {"global", "per_layer"} and rec["chosen"] == max(scores, key=scores.get)
        assert result.global_pruning == (rec["chosen"] == "global") and result.speedup > 2.7
        # what comes back is that ranking's pruned network as pruned (stored statistics, no training step) ...
        again = copy.deepcopy(model)
        _to(3.0, x)(again, rec["chosen"] == "global")
        assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())
        # ... and the score it was chosen by is its val accuracy with batch norms re-estimated
        recal = recalibrate_norms(copy.deepcopy(net), digits, RECALIBRATE_BATCHES, 64, 0, "cpu")
        assert evaluate(recal, val, "cpu")["acc"] == pytest.approx(scores[rec["chosen"]])


def test_a_ranking_that_cannot_reach_the_target_drops_out(zoo, digits):
    model, x = zoo.load(zoo.names("heldout")[0]), digits.example_inputs()

    def only_global(net, g):
        if not g:
            raise ValueError("per-layer ranking would remove a whole layer")
        return _to(2.0, x)(net, g)

    _, result, rec = prune_ranked_on_val(model, only_global, _val(digits))
    assert rec["chosen"] == "global" and "per_layer" in rec["unreachable"] and result.global_pruning

    def neither(net, g):
        raise ValueError(f"unreachable with global_pruning={g}")

    with pytest.raises(ValueError, match="global_pruning=True"):
        prune_ranked_on_val(model, neither, _val(digits))


def test_prune_py_chooses_the_ranking_on_val_and_reports_it(tmp_path, digits):
    r = run_prune(_cfg(tmp_path, "prune.global_pruning=val", "prune.importance=l2_max", "target.speedup=2.0",
                       "finetune.epochs=1"), data=digits, progress=False)
    rec = r["ranking_on_val"]
    assert rec["chosen"] == max(rec["val_acc"], key=rec["val_acc"].get)
    assert r["pruning"]["global_pruning"] == (rec["chosen"] == "global") and r["speedup"] >= 1.9
    assert "ranking chosen on val" in format_report(r) and (tmp_path / "out" / "report.json").is_file()
    # routes that do not prune one-shot to a MACs or parameter target are refused before anything is loaded
    for bad in (["prune.importance=obs"], ["stage=init", "model.checkpoint=null", "model.name=resnet"],
                ["target.speedup=null", "target.latency_speedup=1.5"]):
        out = tmp_path / bad[0].replace("=", "_")
        with pytest.raises(UsageError, match="prune.global_pruning=val"):
            run_prune(_cfg(out, "prune.global_pruning=val", *bad), data=digits, progress=False)
        assert not (out / "out").exists()
    with pytest.raises(UsageError, match="prune.global_pruning"):
        run_prune(_cfg(tmp_path / "w", "prune.global_pruning=sometimes"), data=digits, progress=False)


def test_quality_depgraph_val_and_metaprune_ranked_on_val(zoo, digits, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    c = {"pre_epochs": 0, "finetune_epochs": 1, "importance": "l2_max", "device": "cpu", "metaprune_global": "val",
         "finetune": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
                      "batch_size": 64}}
    assert quality._criterion("depgraph_val", c) == ("l2_max", "val")
    assert quality._criterion("metaprune_direct", c) == ("l2_max", "val")
    out = quality.run_method(zoo.load(zoo.names("heldout")[0]), digits, None, c, 0, "depgraph_val", [2.0])
    cell = out["2.0"]
    assert cell["ranking"]["chosen"] in ("global", "per_layer") and 0 <= cell["finetuned"] <= 1
    meta = tmp_path / "m"
    meta.mkdir()
    (meta / "metanet.safetensors").write_bytes(b"weights")
    paths = {quality._cell_path(tmp_path, "n", 0, "metaprune_direct", {**c, "metanet_checkpoint": meta,
                                                                       "metaprune_global": g})
             for g in (True, False, "val")}
    assert len(paths) == 3  # each ranking keys its own cells
    with pytest.raises(ValueError, match="metaprune_global='sometimes'"):
        quality._criterion("metaprune", {**c, "metaprune_global": "sometimes"})
    # the metanetwork arm ranked on val is paired with its matched baseline, depgraph_val
    per_net = {f"n{i}/seed0": {m: {"3.0": {"finetuned": 0.5 + 0.01 * i + d}} for m, d in
                               (("depgraph", 0.0), ("depgraph_val", 0.02), ("metaprune_direct", 0.03))}
               for i in range(4)}
    diffs = quality.comparisons(per_net, ["depgraph", "depgraph_val", "metaprune_direct"], [3.0])
    assert diffs["metaprune_direct - depgraph_val"]["3.0"]["finetuned"]["mean"] == pytest.approx(0.01)
    assert diffs["depgraph_val - depgraph"]["3.0"]["finetuned"]["wins"] == 4


def _scramble(model, data):
    """A rewrite that wrecks the network (every weight shuffled): what the guard is there to catch."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.flatten()[torch.randperm(p.numel(), generator=g)].view_as(p))
    return model


def test_a_rewrite_that_costs_val_accuracy_is_undone(tmp_path, digits):
    """``metanet.max_val_drop``: a rewrite that costs more val accuracy than allowed is undone, the run prunes the
    network's own weights and says so; a generous bound keeps it; a bad bound is refused up front."""
    undone = run_prune(_cfg(tmp_path / "a", "metanet.max_val_drop=0.5", "finetune.epochs=0"), transform=_scramble,
                       data=digits, progress=False)
    plain = run_prune(_cfg(tmp_path / "b", "finetune.epochs=0"), data=digits, progress=False)
    assert "undone" in undone["metanet"] and "max_val_drop=0.5" in undone["metanet"]
    assert undone["transformed_acc"] is None and undone["pruned_acc"] == pytest.approx(plain["pruned_acc"])
    kept = run_prune(_cfg(tmp_path / "c", "metanet.max_val_drop=100", "finetune.epochs=0"), transform=_scramble,
                     data=digits, progress=False)
    assert kept["metanet"] == "transform given by the caller" and kept["transformed_acc"] < 0.5
    for bad in ("-1", "true", "abc"):
        with pytest.raises(UsageError, match="metanet.max_val_drop"):
            run_prune(_cfg(tmp_path / "d", f"metanet.max_val_drop={bad}"), data=digits, progress=False)
        assert not (tmp_path / "d" / "out").exists()


def test_quality_guard_undoes_a_costly_rewrite_and_keys_its_cells(zoo, digits, tmp_path, monkeypatch):
    import metaprune.metanet

    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    monkeypatch.setattr(metaprune.metanet, "apply_metanet", lambda net, model, x: _scramble(model, None))
    monkeypatch.setattr(quality, "_recalibration", lambda c: 0)
    c = {"pre_epochs": 0, "finetune_epochs": 0, "importance": "l2_max", "device": "cpu",
         "finetune": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
                      "batch_size": 64}}
    base = zoo.load(zoo.names("heldout")[0])
    guarded = quality.run_method(base, digits, None, {**c, "metaprune_max_val_drop": 0.5}, 0, "metaprune_direct",
                                 [2.0])
    plain = quality.run_method(base, digits, None, c, 0, "depgraph", [2.0])
    wrecked = quality.run_method(base, digits, None, c, 0, "metaprune_direct", [2.0])
    assert guarded["rewrite_kept"] is False and guarded["rewritten_val_acc"] < guarded["base_val_acc"] - 0.005
    assert guarded["2.0"]["no_finetune"] == pytest.approx(plain["2.0"]["no_finetune"])  # its own weights, pruned
    assert "rewrite_kept" not in wrecked and wrecked["rewritten_acc"] < guarded["base_val_acc"]
    meta = tmp_path / "m"
    meta.mkdir()
    (meta / "metanet.safetensors").write_bytes(b"weights")
    key = lambda d: quality._cell_path(tmp_path, "n", 0, "metaprune_direct",  # noqa: E731
                                       {**c, "metanet_checkpoint": meta, "metaprune_max_val_drop": d})
    assert len({key(None), key(0.5), key(1.0)}) == 3
    for bad in (-1, 101, True, "half"):  # the bounds prune.py's metanet.max_val_drop has
        with pytest.raises(ValueError, match=f"metaprune_max_val_drop={bad!r}"):
            quality._max_val_drop({"metaprune_max_val_drop": bad})


def test_a_probed_choice_keeps_the_ranking_with_the_lower_val_loss_after_a_few_steps(zoo, digits, tmp_path):
    """``ranking_probe_steps=N``: each candidate's copy (batch norms re-estimated) trains N SGD steps and the lower
    val loss wins; the network returned is still the candidate as pruned, the input untouched; bad values are
    refused by the scorer, prune.py and quality.py before any work."""
    from metaprune.train.loop import probed_val_loss

    x, model = digits.example_inputs(), zoo.load(zoo.names("heldout")[0])
    before = copy.deepcopy(model.state_dict())
    score = ranking_scorer(digits, 64, probe_steps=3, lr=0.01)
    assert score.key == "val_loss_after_3_steps" and not score.higher_is_better
    net, result, rec = prune_ranked_on_val(model, _to(3.0, x), score)
    losses = rec["val_loss_after_3_steps"]
    assert "val_acc" not in rec and rec["chosen"] == min(losses, key=losses.get)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    again = copy.deepcopy(model)
    _to(3.0, x)(again, rec["chosen"] == "global")  # returned as pruned: the probe trained a copy
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in net.state_dict().items())
    assert losses[rec["chosen"]] == pytest.approx(probed_val_loss(net, digits, 3, 0.01, 64))  # repeatable
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="probe_steps"):
            ranking_scorer(digits, probe_steps=bad)
    # prune.py: the option reaches the choice, and the report names the score
    r = run_prune(_cfg(tmp_path, "prune.global_pruning=val", "prune.importance=l2_max", "target.speedup=2.0",
                       "prune.ranking_probe_steps=2", "finetune.epochs=0"), data=digits, progress=False)
    assert set(r["ranking_on_val"]["val_loss_after_2_steps"]) == {"global", "per_layer"}
    assert "val loss after 2 steps" in format_report(r)
    with pytest.raises(UsageError, match="prune.ranking_probe_steps"):
        run_prune(_cfg(tmp_path / "bad", "prune.ranking_probe_steps=-2"), data=digits, progress=False)
    assert not (tmp_path / "bad" / "out").exists()
    # quality.py: refused up front, and the probe keys the cells of the methods that choose on val
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    with pytest.raises(ValueError, match="ranking_probe_steps=-1"):
        quality._probe_steps({"ranking_probe_steps": -1})
    c = {"metaprune_global": True, "importance": "l2_max"}
    key = lambda m, n: quality._cell_path(tmp_path, "n", 0, m, {**c, "ranking_probe_steps": n})  # noqa: E731
    assert key("depgraph_val", 10) != key("depgraph_val", 0) and key("depgraph", 10) == key("depgraph", 0)


def test_ranking_choice_benchmark_scores_each_choice_by_the_points_it_loses():
    """benchmarks/ranking_choice.py: a score that picks the better finisher loses nothing; one that picks the other
    loses the difference (accuracy higher-is-better, loss lower-is-better, a tie keeps global ranking)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import ranking_choice

    rows = [{"net": "a", "speedup": 3.0, "global": {"recal_acc": 0.3, "probe10_loss": 9.0, "final": 0.70},
             "per_layer": {"recal_acc": 0.2, "probe10_loss": 1.0, "final": 0.80}},
            {"net": "b", "speedup": 4.0, "global": {"recal_acc": 0.2, "probe10_loss": 2.0, "final": 0.75},
             "per_layer": {"recal_acc": 0.2, "probe10_loss": 3.0, "final": 0.60}}]
    out = ranking_choice.summarise(rows)
    assert out["recal_acc"] == {"right": 1, "n": 2, "mean_regret": pytest.approx(5.0), "max_regret": pytest.approx(10.0)}
    assert out["probe10_loss"]["right"] == 2 and out["probe10_loss"]["mean_regret"] == 0


def test_a_margin_keeps_global_ranking_only_when_it_leads_by_that_much(zoo, digits, tmp_path):
    """``prune.ranking_margin=m`` (quality.py ``ranking_margin``): global ranking is kept only when its val score leads
    per-layer ranking's by at least m; 0 keeps the old rule (the higher score wins, a tie keeps global). Bad margins
    are refused by prune.py (nothing written) and quality.py, and the margin keys the cells of the methods that
    choose on val only."""
    from metaprune.prune.ranking import check_margin, choose

    assert choose({"global": 0.20, "per_layer": 0.20}) == "global"  # margin 0: the published recipe on a tie
    assert choose({"global": 0.21, "per_layer": 0.20}) == "global"
    assert choose({"global": 0.21, "per_layer": 0.20}, 0.05) == "per_layer"  # a near-chance lead says nothing
    assert choose({"global": 0.30, "per_layer": 0.20}, 0.05) == "global"
    assert choose({"global": 2.0, "per_layer": 2.2}, 0.1, higher_is_better=False) == "global"  # losses: lower leads
    assert choose({"global": 2.0, "per_layer": 2.05}, 0.1, higher_is_better=False) == "per_layer"
    assert choose({"global": 0.1}, 0.5) == "global"  # the only candidate that reached the target
    # on a real network: a margin no lead can reach keeps per-layer ranking; the record says which margin applied
    x, model = digits.example_inputs(), zoo.load(zoo.names("heldout")[0])
    _, result, rec = prune_ranked_on_val(model, _to(3.0, x), _val(digits), margin=0.99)
    assert rec["chosen"] == "per_layer" and not result.global_pruning and rec["margin"] == 0.99
    assert "margin" not in prune_ranked_on_val(model, _to(3.0, x), _val(digits))[2]
    r = run_prune(_cfg(tmp_path, "prune.global_pruning=val", "prune.importance=l2_max", "target.speedup=2.0",
                       "prune.ranking_margin=0.99", "finetune.epochs=0"), data=digits, progress=False)
    assert r["ranking_on_val"]["chosen"] == "per_layer" and not r["pruning"]["global_pruning"]
    assert "global kept only with a lead of at least 99.0%" in format_report(r)
    for bad in ("-0.1", "1.5", "true", "big"):
        with pytest.raises(UsageError, match="prune.ranking_margin"):
            run_prune(_cfg(tmp_path / "bad", f"prune.ranking_margin={bad}"), data=digits, progress=False)
        assert not (tmp_path / "bad" / "out").exists()
    sys.path.insert(0, str(REPO / "benchmarks"))
    import quality

    for bad in (-0.1, 1.0, True, "big"):
        with pytest.raises(ValueError, match="ranking_margin"):
            check_margin(bad)
        with pytest.raises(ValueError, match="ranking_margin"):
            quality._margin({"ranking_margin": bad})
    c = {"metaprune_global": "val", "importance": "l2_max", "metanet_checkpoint": None}
    key = lambda m, v: quality._cell_path(tmp_path, "n", 0, m, {**c, "ranking_margin": v})  # noqa: E731
    assert key("depgraph_val", 0.077) != key("depgraph_val", 0.0) and key("depgraph", 0.077) == key("depgraph", 0.0)
    assert key("depgraph_val", 0.0) == key("depgraph_val", None)  # 0 keeps the cells run before margins existed


def test_ranking_choice_benchmark_selects_the_middle_of_the_least_regret_margins():
    """benchmarks/ranking_choice.py's margin sweep: each interval of margins between observed leads is scored by the
    points its choices lose after the finetune, and the middle of the best interval is selected."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import ranking_choice

    def row(g, pl, fg, fl):
        return {"global": {"recal_acc": g, "final": fg}, "per_layer": {"recal_acc": pl, "final": fl}}
    # leads 0.02 (global wrong by 10 points), 0.06 (global wrong by 2), 0.20 (global right by 5)
    rows = [row(0.14, 0.12, 0.70, 0.80), row(0.36, 0.30, 0.80, 0.82), row(0.50, 0.30, 0.85, 0.80)]
    sweep = ranking_choice.margin_sweep(rows)
    by_span = {(i["from"], i["to"]): i["mean_regret"] for i in sweep["intervals"]}
    assert by_span[(0.0, 0.0)] == pytest.approx(4.0) and by_span[(0.0, 0.02)] == pytest.approx(4.0)
    assert by_span[(0.02, 0.06)] == pytest.approx(2 / 3) and by_span[(0.06, 0.2)] == pytest.approx(0.0)
    assert by_span[(0.2, None)] == pytest.approx(5 / 3)
    assert sweep["selected"] == pytest.approx(0.13)


def test_ranking_choice_benchmark_scores_rules_that_fix_a_familys_ranking():
    """benchmarks/ranking_choice.py's family rules: fixing the ViTs to global ranking overrides the score for them
    only, and its regret is the points those fixed choices lose after the finetune."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import ranking_choice

    def row(net, g, pl, fg, fl):
        return {"net": net, "global": {"recal_acc": g, "final": fg}, "per_layer": {"recal_acc": pl, "final": fl}}
    rows = [row("vit-d2-s0", 0.10, 0.20, 0.60, 0.80),          # the score picks per layer, right; global loses 20
            row("resnet-d14-s0", 0.30, 0.10, 0.80, 0.84)]      # the score picks global, wrong by 4
    rules = {r["rule"]: r for r in ranking_choice.family_rules(rows, margin=0.05)}
    assert rules["every network by the score"]["mean_regret"] == pytest.approx(2.0)
    assert rules["ViTs global, the rest by the score"]["mean_regret"] == pytest.approx(12.0)
    assert rules["ViTs global, the rest per layer"]["mean_regret"] == pytest.approx(10.0)
    assert rules["ViTs global, the rest per layer"]["right"] == 1
