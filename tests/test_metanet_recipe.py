"""The published MetaPruning recipe as options: adaptive squared-L2 pull, task loss over many batches, recovery
finetuning and global max-normalised ranking in meta-validation, and short step-bounded finetuning."""
import copy
import json
import os
import sys

import pytest
import torch

from metaprune.metatrain import MetaConfig, meta_train, prepare
from metaprune.train import fit
from metaprune.train.objectives import group_regulariser, meta_loss

sys.path.insert(0, os.path.dirname(__file__))
from test_train_meta import SMALL_NET, _resnet8_groups  # noqa: E402
from test_zoo import tiny_zoo  # noqa: E402


@pytest.fixture(scope="module")
def zoo():
    return tiny_zoo()


def test_sq_l2_pull_has_the_reference_gradient_gamma_times_w():
    """The reference (torch-pruning's GroupNormPruner rule) adds reg * gamma_u * w to every coupled slice of unit u."""
    model, groups = _resnet8_groups()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    reg, _ = group_regulariser(params, groups, alpha=16.0, kind="sq_l2")
    reg.backward()
    g, s = next((g, s) for g in groups for s in g.slices if params[s.param].dim() == 1)
    norms = g.norms({k: v.detach() for k, v in params.items()})
    gamma = 16.0 ** ((norms.max() - norms) / (norms.max() - norms.min()))
    w = params[s.param].detach().index_select(s.dim, s.idxs)
    grad = params[s.param].grad.index_select(s.dim, s.idxs)
    # a norm weight belongs to one group: its gradient is exactly gamma * w (weakest unit pulled 16x harder)
    torch.testing.assert_close(grad, gamma * w, rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="regulariser 'l3'"):
        group_regulariser(params, groups, 4.0, kind="l3")


def test_task_loss_over_many_batches_is_their_mean_with_one_metanetwork_pass(zoo, digits):
    from metaprune.metanet import Metanet

    case = prepare(zoo, zoo.names("train")[:1], digits.example_inputs())[0]
    torch.manual_seed(0)
    net = Metanet.for_graphs([case.graph], **SMALL_NET)
    batches = [(digits.train.x[i:i + 16], digits.train.y[i:i + 16]) for i in (0, 16, 32)]
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    both, stats = meta_loss(net, case, batches, lam=0.0, alpha=4.0)
    singles = [meta_loss(net, case, [b], lam=0.0, alpha=4.0)[1]["task"] for b in batches]
    assert stats["task"] == pytest.approx(sum(singles) / 3, rel=1e-5)
    assert len(calls) == 1 + 3  # one metanetwork pass for the three batches, one per single call


def test_dynamic_prune_mask_counts_the_width_the_rewrite_moves(zoo, digits, tmp_path):
    """Under global l2_max ranking, a rewrite that shrinks half the units of one group makes pruning take more of
    that group: ``prune_mask="dynamic"`` counts on the rewritten weights and sees it; the count taken once on the
    original network (``fixed``) does not. The zoo network is never changed."""
    from metaprune.metatrain.loop import removed_units

    ex = digits.example_inputs()
    kw = {"importance": "l2_max", "global_pruning": True}
    case = prepare(zoo, zoo.names("train")[:1], ex, speedup=2.0, **kw)[0]
    before = copy.deepcopy(case.model.state_dict())
    assert removed_units(case.model, ex, case.groups, 2.0, **kw) == case.removed
    i, g = max(enumerate(case.groups), key=lambda t: len(t[1].slices[0].idxs) - case.removed[t[0]])
    half = torch.arange(len(g.slices[0].idxs) // 2)
    state = {k: v.clone() for k, v in case.model.state_dict().items()}
    for s in g.slices:
        state[s.param].index_fill_(s.dim, s.idxs[half], 0.0)
    moved = removed_units(case.model, ex, case.groups, 2.0, state=state, **kw)
    assert moved[i] >= len(half) > case.removed[i], (moved[i], case.removed[i])
    assert all(torch.equal(v, case.model.state_dict()[k]) for k, v in before.items())
    cfg = {"steps": 2, "nets_per_step": 1, "batch_size": 16, "warmup_steps": 0, "val_every": 0, "prune_loss": 1.0,
           "prune_mask": "dynamic", "val_speedup": 2.0, "val_importance": "l2_max", "val_global": True}
    out = meta_train(zoo, digits, SMALL_NET, cfg, tmp_path / "m", device="cpu", progress=False)
    assert out["finished"] and (tmp_path / "m" / "metanet.safetensors").is_file()
    with pytest.raises(ValueError, match="prune_mask"):
        MetaConfig.from_dict({"prune_mask": "sometimes"})
    # task_loss=0: the objective is the pruned network's loss alone (for a rewrite that is pruned at once)
    from metaprune.metanet import Metanet

    torch.manual_seed(0)
    net = Metanet.for_graphs([case.graph], **SMALL_NET)
    batch = [(digits.train.x[:32], digits.train.y[:32])]
    loss, stats = meta_loss(net, case, batch, lam=0.0, alpha=4.0, prune_loss=1.0, task_weight=0.0)
    assert loss.item() == pytest.approx(stats["pruned_task"]) and stats["pruned_task"] != stats["task"]
    with pytest.raises(ValueError, match="task_loss"):
        MetaConfig.from_dict({"task_loss": -1})


def test_per_family_metanetwork_trains_and_selects_on_its_families_only(zoo, digits, tmp_path):
    """``meta_optim.families`` restricts meta-training and meta-validation to those zoo families (a per-family
    metanetwork); a family the zoo lacks is one error naming it, before anything is written."""
    fams = sorted({zoo.members[n]["family"] for n in zoo.names("train")})
    one = fams[0]
    cfg = {"steps": 1, "nets_per_step": 1, "batch_size": 16, "warmup_steps": 0, "val_every": 1, "families": one}
    out = meta_train(zoo, digits, SMALL_NET, cfg, tmp_path / "m", device="cpu", progress=False)
    per_net = json.loads((tmp_path / "m" / "config.json").read_text())
    assert out["finished"] and per_net["meta_optim"]["families"] == [one]
    seen = per_net["train_networks"] + per_net["val_networks"]
    assert per_net["val_networks"] and {zoo.members[n]["family"] for n in seen} == {one}
    with pytest.raises(ValueError, match="families.*'nosuchnet'.*not in the zoo"):
        meta_train(zoo, digits, SMALL_NET, {**cfg, "families": ["nosuchnet"]}, tmp_path / "x", device="cpu",
                   progress=False)
    assert not (tmp_path / "x").exists()


def test_recalibrated_meta_training_uses_batch_statistics_and_records_them_for_application(zoo, digits, tmp_path):
    """``recalibrate_batches``: the objective normalises with batch statistics (as the network will be after its
    norms are re-estimated), never writing the zoo network's stored ones; the run records the count, so prune.py
    and the benchmarks recalibrate every rewrite of this metanetwork the same way."""
    import torch.nn.functional as F

    from metaprune.metanet import Metanet
    from metaprune.metanet.resolve import recalibration_batches

    case = prepare(zoo, zoo.names("train")[:1], digits.example_inputs())[0]
    torch.manual_seed(0)
    net = Metanet.for_graphs([case.graph], **SMALL_NET)  # zero-init decoders: the identity rewrite
    x, y = digits.train.x[:64], digits.train.y[:64]
    stored = {k: v.clone() for k, v in case.model.named_buffers()}
    graph_x = case.graph.x.clone()
    _, with_batch = meta_loss(net, case, [(x, y)], lam=0.0, alpha=4.0, batch_stats=True)
    _, with_stored = meta_loss(net, case, [(x, y)], lam=0.0, alpha=4.0)
    ref = copy.deepcopy(case.model)
    for m in ref.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    with torch.no_grad():
        assert with_batch["task"] == pytest.approx(F.cross_entropy(ref(x), y).item(), rel=1e-4)
        assert with_stored["task"] == pytest.approx(F.cross_entropy(case.model(x), y).item(), rel=1e-4)
    assert all(torch.equal(v, dict(case.model.named_buffers())[k]) for k, v in stored.items())
    assert torch.equal(graph_x, case.graph.x) and not case.model.training
    cfg = {"steps": 1, "nets_per_step": 1, "batch_size": 16, "warmup_steps": 0, "val_every": 1,
           "recalibrate_batches": 3}
    out = meta_train(zoo, digits, SMALL_NET, cfg, tmp_path / "m", device="cpu", progress=False)
    assert out["finished"] and recalibration_batches(tmp_path / "m") == 3
    assert recalibration_batches(tmp_path / "m", 0) == 0 and recalibration_batches(None) == 0
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"apply": {"recalibrate_batches": -1}}))
    with pytest.raises(Exception, match="recalibrate_batches=-1"):
        recalibration_batches(tmp_path / "bad")
    with pytest.raises(ValueError, match="recalibrate_batches"):
        MetaConfig.from_dict({"recalibrate_batches": -2})


def test_mask_temperature_lets_the_pruned_loss_reach_the_removed_units_and_keeps_the_forward_hard():
    """With ``mask_temperature`` the pruned network is the same (hard mask forward), but the loss's gradient reaches
    the weights of the units it removes, so training can pull a needed unit back over the boundary; without it,
    removed units get no gradient at all."""
    from metaprune.train.objectives import zero_weakest

    model, groups = _resnet8_groups()
    g = max(groups, key=lambda g: g.units)
    k = g.units // 2
    removed = [k if h is g else 0 for h in groups]
    grads, outs = {}, {}
    for t in (0.0, 0.05):
        params = {n: v.detach().clone().requires_grad_(True) for n, v in model.named_parameters()}
        out = zero_weakest(params, groups, removed, temperature=t)
        outs[t] = {n: v.detach() for n, v in out.items()}
        sum((v * torch.randn_like(v, generator=torch.Generator().manual_seed(1))).sum()
            for v in out.values()).backward()
        s = g.slices[0]
        weak = g.norms({n: v.detach() for n, v in params.items()}).argsort()[:k]
        grads[t] = params[s.param].grad.index_select(s.dim, s.idxs[weak]).abs().sum().item()
    assert all(torch.equal(outs[0.0][n], outs[0.05][n]) for n in outs[0.0])
    assert grads[0.0] == 0.0 and grads[0.05] > 0.0
    with pytest.raises(ValueError, match="mask_temperature"):
        MetaConfig.from_dict({"mask_temperature": -1.0})


def test_fit_max_steps_bounds_the_budget_below_one_epoch(digits):
    from metaprune.models import build

    torch.manual_seed(0)
    model = build("resnet", depth=8, width=4, num_classes=10, in_channels=1)
    seen = []
    model.register_forward_pre_hook(lambda m, a: seen.append(len(a[0])) if m.training else None)
    fit(model, digits, {"epochs": 5, "max_steps": 3, "batch_size": 16, "device": "cpu", "progress": False})
    assert seen == [16, 16, 16]
    with pytest.raises(ValueError, match="max_steps"):
        fit(model, digits, {"epochs": 1, "max_steps": 0, "device": "cpu", "progress": False})


def test_meta_validation_with_recovery_and_global_ranking(zoo, digits, tmp_path):
    """The reference's validation: rewrite, recovery finetune, global l2_max pruning, val accuracy. Recovery
    trains the rewritten copy (never the zoo network) and is selected on the val split."""
    cfg = {"steps": 1, "nets_per_step": 1, "batch_size": 32, "batches_per_step": 2, "warmup_steps": 0,
           "val_every": 1, "reg": "sq_l2", "alpha": 16.0, "lam": 0.1, "val_importance": "l2_max",
           "val_global": True, "val_recovery_steps": 20, "val_recovery_lr": 0.05}
    before = {n: copy.deepcopy(zoo.load(n).state_dict()) for n in zoo.names("val")}
    out = meta_train(zoo, digits, SMALL_NET, cfg, tmp_path / "m", device="cpu", progress=False)
    first = out["history"][0]  # step 0: identity rewrite + recovery, against plain pruning
    assert first["step"] == 0 and 0 <= first["pruned_acc"] <= 1
    assert first["unpruned_acc"] != first["unpruned_acc_base"]  # the recovery finetune did train the copy
    for n, sd in before.items():
        assert all(torch.equal(v, zoo.load(n).state_dict()[k]) for k, v in sd.items())
    with pytest.raises(ValueError, match="val_importance"):
        MetaConfig.from_dict({"val_importance": "l3"})
    with pytest.raises(ValueError, match="batches_per_step"):
        MetaConfig.from_dict({"batches_per_step": 0})


def test_meta_training_ranks_as_the_metanetwork_is_used_when_the_ranking_is_chosen_on_val(zoo, digits, tmp_path,
                                                                                         monkeypatch):
    """``val_global=val``: meta-val prunes each network both ways and goes on with the ranking val prefers (as
    ``prune.global_pruning=val`` and the benchmark's ``metaprune_global=val`` use the metanetwork), and the
    pruned-network loss counts each meta-train network's units with the ranking val chose for it."""
    from metaprune.metatrain.loop import pruned_accuracy, removed_units
    from metaprune.prune import prune
    from metaprune.prune.ranking import prune_ranked_on_val
    from metaprune.train import ranking_scorer

    x, score = digits.example_inputs(), ranking_scorer(digits, 64)
    kw = {"importance": "l2_max"}
    cases = prepare(zoo, zoo.names("train")[:2], x, speedup=3.0, global_pruning="val", score=score, **kw)

    def to3(net, global_pruning):
        net.requires_grad_(True)  # the zoo networks are loaded frozen; torch-pruning traces through autograd
        return prune(net, x, target_speedup=3.0, global_pruning=global_pruning, **kw)

    for case in cases:
        choice = prune_ranked_on_val(case.model, to3, score)[2]
        assert case.global_pruning == (choice["chosen"] == "global")
        assert case.removed == removed_units(case.model, x, case.groups, 3.0, global_pruning=case.global_pruning, **kw)
    loader = digits.loader("val", 512, shuffle=False)
    model = zoo.load(zoo.names("val")[0])
    chosen = pruned_accuracy(model, x, loader, 3.0, global_pruning="val", score=score, **kw)
    fixed = pruned_accuracy(model, x, loader, 3.0, global_pruning=chosen["ranking"] == "global", **kw)
    assert chosen["ranking"] in ("global", "per_layer")
    assert (chosen["acc"], chosen["speedup"]) == (fixed["acc"], fixed["speedup"])
    with pytest.raises(ValueError, match="score"):
        pruned_accuracy(model, x, loader, 3.0, global_pruning="val", **kw)
    cfg = {"steps": 1, "nets_per_step": 1, "batch_size": 16, "warmup_steps": 0, "val_every": 1, "prune_loss": 1.0,
           "prune_mask": "dynamic", "val_speedup": 2.0, "val_importance": "l2_max", "val_global": "val"}
    out = meta_train(zoo, digits, SMALL_NET, cfg, tmp_path / "m", device="cpu", progress=False)
    n_val = len(zoo.names("val"))
    assert [h["step"] for h in out["history"]] == [0, 1]
    assert all(0 <= h["ranked_global"] <= n_val for h in out["history"])
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["meta_optim"]["val_global"] == "val" and "ranked_global" in saved["best"]
    for bad in ("sometimes", 1, None):
        with pytest.raises(ValueError, match="val_global"):
            MetaConfig.from_dict({"val_global": bad})
    # loss_global=true: meta-val still chooses on val, the pruned-network loss ranks globally on every network
    glob = prepare(zoo, zoo.names("train")[:2], x, speedup=3.0, global_pruning=True, **kw)
    assert all(c.global_pruning for c in glob)
    from metaprune.metatrain import loop

    seen = []
    monkeypatch.setattr(loop, "prepare", lambda *a, **k: seen.append(a[6] if len(a) > 6 else None) or prepare(*a, **k))
    out = meta_train(zoo, digits, SMALL_NET, {**cfg, "loss_global": True}, tmp_path / "g", device="cpu",
                     progress=False)
    assert seen[0] is True and out["finished"] and all("ranked_global" in h for h in out["history"])
    for bad in ("val", 1):
        with pytest.raises(ValueError, match="loss_global"):
            MetaConfig.from_dict({"loss_global": bad})


def test_meta_validation_scores_after_a_short_finetune_of_the_pruned_network(digits):
    """Right after pruning to 3x every network sits near chance, so meta-val can score after ``val_finetune_steps``
    of SGD on the pruned copy: a signal that separates, and the zoo network itself is never trained."""
    from metaprune.metatrain.loop import pruned_accuracy

    from metaprune.models import build

    torch.manual_seed(0)
    model = build("resnet", depth=8, width=8, num_classes=10, in_channels=1)
    fit(model, digits, {"epochs": 4, "lr": 0.05, "batch_size": 64, "device": "cpu", "progress": False})
    before = copy.deepcopy(model.state_dict())
    x, loader = digits.example_inputs(), digits.loader("val", 256, shuffle=False)
    kw = {"importance": "l2_max", "global_pruning": False}
    cold = pruned_accuracy(model, x, loader, 3.0, **kw)
    warm = pruned_accuracy(model, x, loader, 3.0, **kw, finetune={"data": digits, "steps": 40, "lr": 0.05,
                                                                   "batch_size": 64})
    assert warm["unpruned_acc"] == cold["unpruned_acc"] and warm["speedup"] == cold["speedup"]
    assert warm["acc"] > cold["acc"] + 0.2, (cold, warm)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="val_finetune_steps"):
        MetaConfig.from_dict({"val_finetune_steps": -1})


def test_quality_identity_arm_runs_metaprunes_pipeline_without_the_rewrite(zoo, digits, tmp_path):
    """``metaprune_identity`` is metaprune's control: the same E epochs before pruning and the same ranking, no
    metanetwork; ``metaprune_global=false`` ranks per layer and keys its own cells."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    c = {"pre_epochs": 1, "finetune_epochs": 0, "importance": "l2_max", "device": "cpu", "metaprune_global": False,
         "finetune": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
                      "batch_size": 64}}
    out = quality.run_method(zoo.load(zoo.names("heldout")[0]), digits, None, c, 0, "metaprune_identity", [2.0])
    assert "rewritten_acc" not in out and 0 <= out["recovered_acc"] <= 1
    assert out["2.0"]["epochs_before_prune"] == 1 and out["2.0"]["epochs_after_prune"] == 0
    assert quality._criterion("metaprune_identity", c) == ("l2_max", False)
    assert quality._criterion("metaprune", {**c, "metaprune_global": True}) == ("l2_max", True)
    meta = tmp_path / "m"
    meta.mkdir()
    (meta / "metanet.safetensors").write_bytes(b"weights")
    paths = {quality._cell_path(tmp_path, "n", 0, "metaprune", {**c, "metanet_checkpoint": meta,
                                                                "metaprune_global": g}) for g in (True, False)}
    assert len(paths) == 2
    identity = lambda: quality._cell_path(tmp_path, "n", 0, "metaprune_identity",  # noqa: E731
                                          {**c, "metanet_checkpoint": meta})
    before = identity()
    (meta / "metanet.safetensors").write_bytes(b"retrained")  # the control does not depend on the metanetwork
    assert identity() == before


def test_quality_right_after_pruning_scores_with_recalibrated_norms_and_can_stop_there(zoo, digits, tmp_path):
    """``recalibrate_after_prune=N`` adds the right-after-pruning score with batch norms re-estimated on a copy (the
    stored statistics are stale once channels are gone); ``prune_only`` skips the final finetune. Both key their own
    cells; the defaults keep the keys finished cells already have."""
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import quality

    c = {"pre_epochs": 0, "finetune_epochs": 1, "importance": "l2_max", "device": "cpu",
         "recalibrate_after_prune": 4, "prune_only": True,
         "finetune": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
                      "batch_size": 64}}
    gains = []
    for name in zoo.names("heldout"):
        base = zoo.load(name)
        before = {k: v.clone() for k, v in base.state_dict().items()}
        out = quality.run_method(base, digits, None, c, 0, "depgraph", [3.0])
        cell = out["3.0"]
        assert "finetuned" not in cell and cell["epochs_after_prune"] == 0
        gains.append(cell["recalibrated"] - cell["no_finetune"])
        assert all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())  # the network is untouched
    assert min(gains) > 0, gains  # stale statistics cost accuracy that re-estimating them returns
    full = {k: v for k, v in c.items() if k not in ("recalibrate_after_prune", "prune_only")}
    paths = [quality._cell_path(tmp_path, "n", 0, "depgraph", x) for x in
             (full, {**full, "recalibrate_after_prune": 0, "prune_only": False}, c, {**c, "prune_only": False})]
    assert paths[0] == paths[1] == tmp_path / "n-seed0" / "depgraph.json" and len(set(paths[1:])) == 3
    with pytest.raises(ValueError, match="recalibrate_after_prune=-1"):
        quality._after_prune({"recalibrate_after_prune": -1})
    table = {"depgraph": {"3.0": {ph: {"mean": 0.5, "std": 0.0, "n": 2} for ph in ("no_finetune", "recalibrated")}}}
    assert "3.0× recal" in quality.markdown(table, [3.0], 0.9) and "× ft" not in quality.markdown(table, [3.0], 0.9)
    quality.plot(table, [3.0], tmp_path / "curve.png", "right after pruning")
    assert (tmp_path / "curve.png").stat().st_size > 0


def test_heldout_benchmark_gives_both_arms_the_same_recovery_and_ranking(zoo, digits, tmp_path):
    """benchmarks/metanet_heldout.py with the reference's recovery and global ranking: every held-out network is
    scored with and without the rewrite, both after the same recovery steps, with the accuracies a user reads."""
    import json
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import metanet_heldout

    meta_train(zoo, digits, SMALL_NET, {"steps": 1, "batch_size": 16, "val_every": 1, "warmup_steps": 0},
               tmp_path / "m", device="cpu", progress=False)
    out = tmp_path / "metanet_heldout-m.json"
    r = metanet_heldout.main(["--metanet", str(tmp_path / "m"), "--zoo", str(zoo.root), "--speedups", "2",
                              "--importance", "l2_max", "--global", "--recovery-steps", "3", "--out", str(out)])
    assert json.loads(out.read_text())["recovery_steps"] == 3 and r["global_pruning"] is True
    rows = [x for x in r["networks"] if "error" not in x]
    assert len(rows) == len(zoo.names("heldout")) and rows
    for x in rows:
        assert 0 <= x["acc_meta"] <= 1 and 0 <= x["acc_base"] <= 1 and x["speedup_base"] > 1.5
        assert 0 <= x["original_acc"] <= 1 and 0 <= x["rewritten_acc"] <= 1 and 0 <= x["unpruned_meta"] <= 1

    # the ablation table reads the run and its held-out result: settings, meta-val score, held-out gain and wins
    import metanet_ablation

    q = tmp_path / "quality-m.json"  # the proving ground's paired statistics, as quality.py writes them
    d = {"mean": -0.05, "ci95": [-0.08, -0.02], "wins": 2, "n": 15, "losses": 13, "separated": True}
    q.write_text(json.dumps({"base_acc_mean": 0.9, "paired": {"metaprune_direct - depgraph": {"3.0": {"finetuned": d}},
                                                              "depgraph_sl - depgraph": {"3.0": {"finetuned": d}}}}))
    t = metanet_ablation.main([str(tmp_path / "m"), "--heldout-dir", str(tmp_path), "--out", str(tmp_path / "a.json"),
                               "--quality", f"m={q}"])
    (row,) = t["variants"]
    assert t["selected"] == "m" and row["val_best"]["step"] in (0, 1) and row["settings"]["hidden"] == 8
    assert "held-out 2x meta − base (wins)" in t["table"] and f"/{len(rows)})" in t["table"]
    assert list(row["protocol"]["vs_depgraph"]) == ["metaprune_direct"] and "-5.0 [-8.0, -2.0] (2/15)" in t["table"]
    # an arm ranked per layer is also read against its matched baseline, depgraph_local
    e = {**d, "mean": 0.01, "ci95": [-0.01, 0.03], "wins": 9, "losses": 6, "separated": False}
    q.write_text(json.dumps({"base_acc_mean": 0.9, "config": {"metaprune_global": False},
                             "paired": {"metaprune_direct - depgraph": {"3.0": {"finetuned": d}},
                                        "metaprune_direct - depgraph_local": {"3.0": {"finetuned": e}}}}))
    t = metanet_ablation.main([str(tmp_path / "m"), "--out", str(tmp_path / "a.json"), "--quality", f"m={q}"])
    assert t["variants"][0]["protocol"]["ranking"] == "per layer"
    assert "3× − depgraph_local after ft" in t["table"] and "+1.0 [-1.0, +3.0] (9/15)" in t["table"]
    # an arm with the ranking chosen on val is read against depgraph_val, and the settings name the gain rewrite
    q.write_text(json.dumps({"base_acc_mean": 0.9, "config": {"metaprune_global": "val"},
                             "paired": {"metaprune_direct - depgraph_val": {"3.0": {"finetuned": e}}}}))
    t = metanet_ablation.main([str(tmp_path / "m"), "--out", str(tmp_path / "a.json"), "--quality", f"m={q}"])
    assert t["variants"][0]["protocol"]["ranking"] == "chosen on val" and "3× − depgraph_val after ft" in t["table"]
    assert t["variants"][0]["settings"]["mode"] == "delta"
    # --merge keeps an earlier table's rows (their run directories may be gone) and adds or replaces the runs given
    earlier = {"variants": [{**t["variants"][0], "variant": "gone"}, {**t["variants"][0], "variant": "m", "seed": -1}]}
    (tmp_path / "old.json").write_text(json.dumps(earlier))
    t = metanet_ablation.main([str(tmp_path / "m"), "--out", str(tmp_path / "a.json"), "--merge",
                               str(tmp_path / "old.json")])
    assert [r["variant"] for r in t["variants"]] == ["gone", "m"] and t["variants"][1]["seed"] != -1
    assert "| gone |" in t["table"]
    # the zoo a run meta-trained on is one of its settings: named where it differs from the first row's
    assert t["variants"][1]["settings"]["zoo"] == zoo.root.name
    older = {**t["variants"][0], "variant": "older",
             "settings": {k: v for k, v in t["variants"][0]["settings"].items() if k != "zoo"}}
    (tmp_path / "old.json").write_text(json.dumps({"variants": [older]}))
    t = metanet_ablation.main([str(tmp_path / "m"), "--out", str(tmp_path / "a.json"), "--merge",
                               str(tmp_path / "old.json")])
    assert "| older | (reference) |" in t["table"] and f"| m | zoo={zoo.root.name} |" in t["table"]
    with pytest.raises(SystemExit, match="--merge"):
        metanet_ablation.main([str(tmp_path / "m"), "--out", str(tmp_path / "d.json"), "--merge", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="RUN_NAME=FILE"):
        metanet_ablation.main([str(tmp_path / "m"), "--out", str(tmp_path / "c.json"), "--quality", "m"])
    with pytest.raises(SystemExit, match="no config.json"):
        metanet_ablation.main([str(tmp_path), "--out", str(tmp_path / "b.json")])


def test_recovery_after_the_rewrite_defaults_to_what_the_metanetwork_was_selected_with(tmp_path):
    import json

    from metaprune.io import CheckpointError
    from metaprune.metanet.resolve import recovery_epochs

    (tmp_path / "config.json").write_text(json.dumps({"apply": {"finetune_epochs": 1}}))
    assert recovery_epochs(tmp_path, "auto") == 1 and recovery_epochs(tmp_path, 0) == 0
    assert recovery_epochs(tmp_path / "missing", "auto") == 0  # a metanetwork that names none: no recovery
    (tmp_path / "config.json").write_text(json.dumps({"apply": {"finetune_epochs": -2}}))
    with pytest.raises(CheckpointError, match="apply.finetune_epochs=-2"):
        recovery_epochs(tmp_path, "auto")


def test_the_fashion_mnist_metanetwork_covers_every_family_of_its_zoo():
    """Depthwise convs (MobileNetV2), concatenations (DenseNet), 4x4 patch convs (ViT) and the held-out VGG: the
    shipped metanetwork has an encoder for every neuron and weight type, so `auto` never skips one of them."""
    from pathlib import Path

    from metaprune.graph import to_graph
    from metaprune.metanet import load_metanet
    from metaprune.zoo import load_zoo

    root = Path(__file__).resolve().parents[1] / "checkpoints"
    if not (root / "metanet/fashion_mnist/metanet.safetensors").is_file():
        pytest.skip("no Fashion-MNIST metanetwork in this checkout")
    net, zoo = load_metanet(root / "metanet/fashion_mnist"), load_zoo(root / "zoo/fashion_mnist")
    x = torch.zeros(1, 1, 28, 28)
    families = {}
    for name in zoo.names("train") + zoo.names("heldout"):
        families.setdefault(zoo.members[name]["family"], name)
    assert set(families) == {"resnet", "vgg", "vit", "mobilenet_v2", "densenet"}
    for fam, name in families.items():
        assert net.unseen_types(to_graph(zoo.load(name), x)) == [], fam
    assert {"depthwise_conv", "concat"} <= set(net.config["node_types"])


def test_auto_skips_a_shipped_metanetwork_that_lost_on_its_heldout_networks(tmp_path, monkeypatch, capsys):
    """A metanetwork marked apply.auto=false (it loses to plain pruning) is never applied behind the user's back;
    named by path it is applied."""
    import json

    import metaprune.metanet.resolve as R

    shipped = tmp_path / "metanet"
    (shipped / "fashion_mnist").mkdir(parents=True)
    (shipped / "fashion_mnist" / "metanet.safetensors").write_bytes(b"0")
    (shipped / "fashion_mnist" / "config.json").write_text(json.dumps(
        {"apply": {"auto": False, "why_not_auto": "loses to plain pruning"}}))
    monkeypatch.setattr(R, "SHIPPED", shipped)
    assert R.resolve_metanet("auto", "fashion_mnist") is None
    assert "loses to plain pruning" in capsys.readouterr().out
    assert R.resolve_metanet(str(shipped / "fashion_mnist"), "fashion_mnist") == shipped / "fashion_mnist"
