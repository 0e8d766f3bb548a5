"""metanet.mode=gain: one gain per batch-normalised neuron on its incoming weights. Once the batch norms are
re-estimated the network computes what it did, so the rewrite costs no accuracy; only which units norm pruning
keeps (and, under global ranking, how many per layer) moves."""
import copy
import os
import sys

import pytest
import torch
import torch.nn as nn

from metaprune.graph import to_graph
from metaprune.metanet import Metanet, apply_metanet, load_metanet, save_metanet
from metaprune.metanet import model as metanet_model
from metaprune.prune import prune
from metaprune.train import reestimate_norms

sys.path.insert(0, os.path.dirname(__file__))


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10)).eval()


def trained_gain_metanet(graph, scale=1.5, seed=1):
    """A gain metanetwork whose decoders are not zero (an untrained one is the identity)."""
    torch.manual_seed(seed)
    net = Metanet.for_graphs([graph], hidden=8, layers=2, scale=scale, mode="gain")
    for dec in net.node_dec.values():
        nn.init.normal_(dec.weight, std=0.3)
    return net.eval()


def test_untrained_gain_metanet_is_the_identity_and_bad_modes_are_refused():
    model = small_cnn()
    ex = torch.randn(2, 1, 8, 8)
    graph = to_graph(model, ex)
    net = Metanet.for_graphs([graph], hidden=8, layers=1, mode="gain")
    x, attr = net(graph)
    assert torch.equal(x, graph.x) and torch.equal(attr, graph.edge_attr)
    with pytest.raises(ValueError, match="metanet.mode='bogus'"):
        Metanet.for_graphs([graph], mode="bogus")
    with pytest.raises(ValueError, match="gain_slot"):
        Metanet(["conv"], {"conv3x3": 9}, 5, mode="gain")


def test_gain_rewrite_keeps_the_function_after_recalibration_and_moves_the_pruning():
    model = small_cnn()
    data = [torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    reestimate_norms(model, data)
    graph = to_graph(model, data[0][:2])
    before = copy.deepcopy(model.state_dict())
    rewritten = apply_metanet(trained_gain_metanet(graph), model, data[0][:2])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input network is untouched
    new = rewritten.state_dict()
    # every output channel of a batch-normalised conv is scaled by one positive gain; the gains differ
    for i in (0, 3, 6):
        ratio = new[f"{i}.weight"].flatten(1) / model.state_dict()[f"{i}.weight"].flatten(1)
        assert (ratio > 0).all() and torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)
        assert ratio[:, 0].std() > 0.05
    # batch-norm parameters, running statistics and the classifier (no batch norm after it) are not rewritten
    for k in ("1.weight", "1.bias", "1.running_var", "11.weight", "11.bias"):
        assert torch.equal(new[k], model.state_dict()[k]), k
    reestimate_norms(rewritten, data)
    x = torch.randn(32, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(rewritten(x), model(x), rtol=1e-3, atol=1e-4)
    # the same function, but norm pruning keeps other channels
    kept = lambda m: prune(copy.deepcopy(m), x[:2], target_speedup=2.0, importance="l2").channels  # noqa: E731
    assert kept(rewritten) == kept(model)  # same widths per layer (ranked per layer) ...
    pruned_orig, pruned_new = copy.deepcopy(model), copy.deepcopy(rewritten)
    prune(pruned_orig, x[:2], target_speedup=2.0, importance="l2")
    prune(pruned_new, x[:2], target_speedup=2.0, importance="l2")
    bn = lambda m: m[1].running_mean  # noqa: E731  ... but not the same channels of the first layer
    assert not torch.equal(bn(pruned_orig), bn(pruned_new))


def test_gain_mode_chunked_pass_equals_the_differentiable_one_and_checkpoints_round_trip(tmp_path, monkeypatch):
    model = small_cnn()
    ex = torch.randn(2, 1, 8, 8)
    graph = to_graph(model, ex)
    net = trained_gain_metanet(graph)
    x, attr = net(graph)
    monkeypatch.setattr(metanet_model, "CHUNK_EDGES", 7)
    with torch.no_grad():
        x2, attr2 = net(graph)
    assert torch.equal(x2, x)
    torch.testing.assert_close(attr2, attr.detach(), rtol=1e-5, atol=1e-7)
    monkeypatch.undo()
    save_metanet(net, tmp_path / "g")
    back = load_metanet(tmp_path / "g")
    assert back.config["mode"] == "gain" and back.config["gain_slot"] == net.config["gain_slot"]
    torch.testing.assert_close(back(graph)[1], attr.detach())


def test_gain_metanet_meta_trains_through_the_pruned_loss(digits, tmp_path):
    """With the pruned-network loss and a straight-through mask, gradients reach the gain decoders (the unpruned
    loss alone gives none under batch statistics: the norm divides the gain out); one meta-training run saves a
    gain metanetwork that prune.py-style application reads back."""
    from test_train_meta import SMALL_NET
    from test_zoo import tiny_zoo

    from metaprune.metatrain import meta_train, prepare
    from metaprune.train.objectives import meta_loss

    zoo = tiny_zoo()
    ex = digits.example_inputs()
    case = prepare(zoo, zoo.names("train")[:1], ex, speedup=2.0, importance="l2_max", global_pruning=True)[0]
    torch.manual_seed(0)
    net = Metanet.for_graphs([case.graph], **{**SMALL_NET, "mode": "gain", "scale": 1.0})
    for dec in net.node_dec.values():  # off the identity, so the straight-through mask has a boundary to move
        nn.init.normal_(dec.weight, std=0.1)
    batch = [(digits.train.x[:64], digits.train.y[:64])]
    loss, _ = meta_loss(net, case, batch, lam=0.0, alpha=4.0, prune_loss=1.0, task_weight=0.0, batch_stats=True,
                        mask_temperature=0.1)
    loss.backward()
    assert any(d.weight.grad is not None and d.weight.grad.abs().sum() > 0 for d in net.node_dec.values())
    cfg = {"steps": 2, "nets_per_step": 1, "batch_size": 16, "warmup_steps": 0, "val_every": 1, "prune_loss": 1.0,
           "task_loss": 0.0, "lam": 0.0, "prune_mask": "dynamic", "mask_temperature": 0.1, "val_speedup": 2.0,
           "val_importance": "l2_max", "val_global": True, "recalibrate_batches": 2}
    out = meta_train(zoo, digits, {**SMALL_NET, "mode": "gain", "scale": 1.0}, cfg, tmp_path / "m", device="cpu",
                     progress=False)
    assert out["finished"] and load_metanet(tmp_path / "m").config["mode"] == "gain"
