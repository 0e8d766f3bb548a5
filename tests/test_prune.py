"""prune(): targets met, groups exposed as slices, criteria, round_to, protection, reload, finetuning."""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from metaprune.models import build
from metaprune.prune import find_output_layers, group_norms, groups, importance, prune
from metaprune.depgraph import UnprunableOpError

X32 = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

SMALL = {
    "resnet20": ("resnet", dict(depth=20, width=16)),
    "vgg": ("vgg", dict(depth=11, width=16)),
    "mobilenet_v2": ("mobilenet_v2", dict(width_mult=0.5)),
    "vit": ("vit", dict(image_size=32, patch_size=4, depth=2, dim=64, heads=4)),
}


def _model(key, seed=0):
    torch.manual_seed(seed)
    name, args = SMALL[key]
    return build(name, **args)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared 2-core machines: one thread is faster than oversubscribing
    yield
    torch.set_num_threads(n)


def test_group_slices_match_torch_pruning_group_l2_on_resnet20():
    import torch_pruning as tp

    model = _model("resnet20")
    for p in model.parameters():  # BN weights start at 1: randomise so the comparison is not trivial
        nn.init.normal_(p)
    grps = groups(model, X32, ignored=find_output_layers(model, X32))
    assert [g.units for g in grps].count(16) >= 4 and len(grps) == 12
    params = dict(model.named_parameters())
    ref = tp.importance.GroupMagnitudeImportance(p=2, group_reduction="sum", normalizer=None, bias=True)
    for g in grps:
        ours = group_norms(g, params).pow(2)
        manual = torch.zeros(g.units)
        for c in range(g.units):
            manual[c] = sum(params[s.param].index_select(s.dim, s.idxs[c:c + 1]).pow(2).sum() for s in g.slices)
        torch.testing.assert_close(ours, manual, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours, ref(g.tp_group).float(), rtol=1e-4, atol=1e-5)


def test_groups_of_a_frozen_model_under_no_grad():
    """Meta-training freezes the network's own weights; the groups must not depend on requires_grad."""
    model = _model("resnet20").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        grps = groups(model, X32, ignored=["fc"])
    assert len(grps) == 12
    assert not any(p.requires_grad for p in model.parameters())


def test_group_norms_are_differentiable():
    model = _model("resnet20")
    grps = groups(model, X32, ignored=["fc"])
    params = dict(model.named_parameters())
    loss = sum(group_norms(g, params).sum() for g in grps)
    loss.backward()
    assert model.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad.abs().sum() > 0  # fc's input columns belong to the last stage's group


@pytest.mark.parametrize("key", list(SMALL))
def test_target_speedup_reached(key):
    model = _model(key)
    res = prune(model, X32, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.02)
    assert res.pruned_macs < res.base_macs and res.pruned_params < res.base_params
    assert model(X32).shape == (1, 10)
    assert res.predicted_macs == pytest.approx(res.pruned_macs, rel=1e-3)  # the analytic count is exact


@pytest.mark.parametrize("key", ["resnet20", "vit"])
def test_global_pruning_and_params_target(key):
    model = _model(key)
    res = prune(model, X32, target_params=2.0, global_pruning=True, importance="l2_max")
    assert res.param_ratio == pytest.approx(2.0, rel=0.02)
    assert model(X32).shape == (1, 10)
    assert res.importance == "l2_max"  # the report names the criterion asked for (DepGraph's max-normalised L2)


def test_vit_prunes_head_dims_and_keeps_heads():
    model = _model("vit")
    prune(model, X32, target_speedup=2.0)
    for blk in model.blocks:
        a = blk.attn
        assert a.num_heads == 4 and a.qkv.out_features == 3 * a.proj.in_features
        assert a.proj.in_features % 4 == 0 and a.proj.in_features < 64


def test_bad_targets_say_why():
    with pytest.raises(ValueError, match="must be > 1"):
        prune(_model("resnet20"), X32, target_speedup=1.0)
    with pytest.raises(ValueError, match=r"unreachable .* about \d+\.\d+x"):
        prune(_model("resnet20"), X32, target_speedup=1000.0)


def test_round_to_gives_multiples():
    model = _model("resnet20")
    prune(model, X32, target_speedup=2.0, round_to=8)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert sum(c.out_channels for c in convs) < sum(c.out_channels for c in _model("resnet20").modules()
                                                    if isinstance(c, nn.Conv2d))


def test_protected_layers_untouched():
    model = _model("resnet20")
    before = model.layer2[0].conv1.weight.shape[0]
    res = prune(model, X32, target_speedup=2.0, ignored_layers=["layer2.0.conv1"])
    assert model.layer2[0].conv1.weight.shape[0] == before
    assert model.fc.out_features == 10 and "fc" in res.protected
    assert model.layer3[1].conv1.out_channels < 64  # the rest was pruned
    with pytest.raises(ValueError, match="not modules of the model"):
        prune(_model("resnet20"), X32, target_speedup=2.0, ignored_layers=["no.such.layer"])


def test_unprunable_op_is_named():
    class WithBilinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.mix = nn.Bilinear(8, 8, 8)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            h = self.conv(x).mean((2, 3))
            return self.fc(self.mix(h, h))

    with pytest.raises(UnprunableOpError, match=r"mix \(Bilinear\)"):
        prune(WithBilinear(), X32, target_speedup=1.5)


def test_layer_without_rule_that_no_group_reaches_is_left_as_it_is():
    """A layer with parameters but no pruning rule, sized by something no pruning changes (here the classes, as a
    relative position bias table is sized by positions and heads), does not stop the prune and keeps its shapes."""
    class ClassBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Parameter(torch.randn(10))

        def forward(self, x):
            return x + self.table

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 10), ClassBias())
    res = prune(model, X32, target_speedup=1.5)
    assert res.speedup == pytest.approx(1.5, rel=0.05) and model[7].table.shape == (10,)
    assert model(X32).shape == (X32.shape[0], 10)


def test_criteria_pick_the_channels_they_score_lowest():
    """Every criterion runs; magnitude criteria remove exactly their lowest-scoring units, unlike random."""
    from metaprune.depgraph import DepGraph

    calib = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    removed = {}
    for name in ["l2", "l1", "lamp", "taylor", "random"]:
        model = _model("resnet20")
        res = prune(model, X32, target_speedup=1.5, importance=name, calibration=calib)
        assert res.speedup == pytest.approx(1.5, rel=0.03)
        removed[name] = res.removed
    for name in ["l2", "l1", "lamp", "taylor"]:
        assert removed[name] != removed["random"], name
    # local pruning removes, in each group, the units with the smallest criterion score
    model = _model("resnet20")
    dg = DepGraph(model, X32, ["fc"])
    crit, params = importance("l1"), dict(model.named_parameters())
    for g in dg.groups:
        if g.root in removed["l1"]:
            s = crit(g, params)
            gone = torch.tensor(removed["l1"][g.root])
            kept = torch.tensor([u for u in range(g.units) if u not in set(gone.tolist())])
            assert s[gone].max() <= s[kept].min()
    with pytest.raises(ValueError, match="calibration batch"):
        prune(_model("resnet20"), X32, target_speedup=1.5, importance="taylor")
    with pytest.raises(ValueError, match="unknown importance"):
        importance("obs-typo")


@pytest.mark.parametrize("key", ["resnet20", "vit"])
def test_pruned_model_reloads_in_fresh_process(tmp_path, key):
    from metaprune.io import save_model

    model = _model(key)
    prune(model, X32, target_speedup=2.0)
    save_model(model.eval(), tmp_path / "pruned")
    torch.save(X32, tmp_path / "x.pt")
    with torch.no_grad():
        ref = model(X32)
    code = (
        "import sys, torch, metaprune\n"
        "m = metaprune.load_model(sys.argv[1] + '/pruned')\n"
        "x = torch.load(sys.argv[1] + '/x.pt', weights_only=True)\n"
        "with torch.no_grad(): torch.save(m(x), sys.argv[1] + '/y.pt')\n"
        "print(sum(p.numel() for p in m.parameters()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == sum(p.numel() for p in model.parameters())
    torch.testing.assert_close(torch.load(tmp_path / "y.pt", weights_only=True), ref)


def test_finetuning_recovers_accuracy_on_digits(digits):
    from metaprune.train import evaluate, fit

    torch.manual_seed(0)
    model = build("resnet", depth=8, width=16, num_classes=10, in_channels=1)
    opt = dict(epochs=8, optimizer="sgd", lr=0.1, batch_size=64, progress=False, amp=False)
    fit(model, digits, opt)
    val = digits.loader("val", 512, shuffle=False)
    base = evaluate(model, val, "cpu")["acc"]
    res = prune(model, digits.example_inputs(), target_speedup=3.0)
    pruned = evaluate(model, val, "cpu")["acc"]
    fit(model, digits, {**opt, "epochs": 4, "lr": 0.02})
    final = evaluate(model, val, "cpu")["acc"]
    assert base > 0.9 and res.speedup == pytest.approx(3.0, rel=0.03)
    assert final > pruned and final >= base - 0.03, (base, pruned, final)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2", "densenet121", "vit_b_16"])
def test_torchvision_models_reach_2x(name):
    model = build(f"tv:{name}")
    x = torch.randn(1, 3, 224, 224)
    res = prune(model, x, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.02)
    assert model(x).shape == (1, 1000)
    json.dumps(res.to_dict())


class _TinyDense(nn.Module):
    """Concatenations feeding later layers (DenseNet / Inception style)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(14)
        self.c2 = nn.Conv2d(14, 6, 3, padding=1)
        self.trans = nn.Conv2d(20, 12, 1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([x, torch.relu(self.c1(x))], 1)
        x = torch.cat([x, torch.relu(self.c2(torch.relu(self.bn(x))))], 1)
        return self.fc(self.trans(x).mean((2, 3)))


def test_one_pass_apply_equals_group_by_group_pruning_through_concats():
    """Our single cut per layer gives the same network as torch-pruning's group-by-group pruning."""
    import copy

    from metaprune.depgraph import DepGraph

    torch.manual_seed(0)
    a = _TinyDense().eval()
    b = copy.deepcopy(a)
    dga, dgb = DepGraph(a, X32, ["fc"]), DepGraph(b, X32, ["fc"])
    removed = {i: torch.arange(0, g.units, 2) for i, g in enumerate(dga.groups)}
    dga.apply(removed)
    for i, units in removed.items():  # torch-pruning's way: regroup before every cut
        root = dgb.groups[i].tp_group[0].dep
        dgb.DG.get_pruning_group(root.target.module, root.handler, units.tolist()).prune()
    assert a.trans.in_channels == 10 and a.bn.num_features == 7
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])
    with torch.no_grad():
        torch.testing.assert_close(a(X32), b(X32))
    res = prune(_TinyDense(), X32, target_speedup=1.6)  # 4 small groups: each channel is ~5% of the MACs
    assert res.predicted_macs == pytest.approx(res.pruned_macs, rel=1e-6)
    assert res.speedup == pytest.approx(1.6, rel=0.05)


def test_convnext_blocks_prune_to_2x_with_layer_scale():
    """torchvision's ConvNeXt (two tiny stages): depthwise convs, channels-last LayerNorm, LayerNorm2d (a subclass
    torch-pruning's counter does not count) and the raw ``layer_scale`` parameters of every block."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    model = ConvNeXt([CNBlockConfig(8, 16, 2), CNBlockConfig(16, None, 2)], num_classes=10).eval()
    res = prune(model, X32, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.02)
    assert res.predicted_macs == pytest.approx(res.pruned_macs, rel=1e-6)
    block = model.features[1][0]
    width = block.block[0].out_channels
    assert width < 8 and block.layer_scale.shape == (width, 1, 1) and model.features[0][1].weight.shape == (width,)
    assert model(X32).shape == (1, 10)
