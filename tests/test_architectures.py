"""Non-CNN families (LSTM, GAT, DGCNN) and DenseNet/ResNeXt: data, forward, exact custom pruners, 2x MACs
pruning through ``metaprune.prune.prune`` (custom pruners included), save/load of the pruned model, and (slow)
train -> prune -> finetune accuracy."""
import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

import metaprune.data.synthetic  # noqa: F401  (registers digits_seq, sbm, shapes3d)
import metaprune.models.dense  # noqa: F401
import metaprune.models.pointcloud  # noqa: F401
from metaprune.data import get_data
from metaprune.io import load_model, save_model
from metaprune.layers import custom_pruners, pruner_for
from metaprune.models import build, build_for_data
from metaprune.prune import UnprunableOpError, groups, prune

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("arch_bench", ROOT / "benchmarks" / "architectures.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("arch_bench", mod)
    spec.loader.exec_module(mod)
    return mod


bench = _bench()


# ------------------------------------------------------------------ data
def test_digits_seq_is_digits_rows():
    seq, img = get_data("digits_seq"), get_data("digits")
    assert seq.input_shape == (8, 8) and seq.num_classes == 10
    assert torch.equal(seq.train.x, img.train.x.squeeze(1)) and torch.equal(seq.test.y, img.test.y)


def test_sbm_is_deterministic_homophilous_and_split():
    a, b = get_data("sbm", seed=0), get_data("sbm", seed=0)
    g = a.info["graph"]
    assert torch.equal(g["edge_index"], b.info["graph"]["edge_index"]) and torch.equal(g["x"], b.info["graph"]["x"])
    ids = torch.cat([a.train.x, a.val.x, a.test.x])
    assert len(ids.unique()) == len(ids) == a.info["num_nodes"]  # disjoint splits covering every node
    y = torch.empty(a.info["num_nodes"], dtype=torch.long)
    y[ids] = torch.cat([a.train.y, a.val.y, a.test.y])
    src, dst = g["edge_index"]
    assert (y[src] == y[dst]).float().mean() > 0.6  # communities: most edges stay inside a class
    assert torch.equal(torch.sort(src).values, torch.sort(dst).values)  # undirected (both directions)
    assert not torch.equal(g["x"], get_data("sbm", seed=1).info["graph"]["x"])


def test_shapes3d_clouds_are_centred_unit_and_balanced():
    d = get_data("shapes3d", num_points=64, n_train=8, n_val=2, n_test=2)
    x = d.train.x
    assert x.shape == (8 * d.num_classes, 3, 64) and d.input_shape == (3, 64)
    assert torch.bincount(d.train.y).tolist() == [8] * d.num_classes
    assert x.norm(dim=1).amax(1).sub(1).abs().max() < 1e-5 and x.mean(2).abs().max() < 1e-5
    again = get_data("shapes3d", num_points=64, n_train=8, n_val=2, n_test=2)
    assert torch.equal(x, again.train.x)
    with pytest.raises(ValueError, match="unknown shape"):
        get_data("shapes3d", classes=("sphere", "teapot"))


# ------------------------------------------------------------------ models
SMALL = {
    "lstm": ("digits_seq", {"hidden_size": 16, "num_layers": 2, "head": 16}),
    "gat": ("sbm", {"hidden": 8, "heads": 2}),
    "dgcnn": ("shapes3d", {"widths": [8, 8, 16], "emb": 32, "head": 16, "k": 5}),
    "densenet": ("digits", {"blocks": [2, 2], "growth": 4}),
    "resnext": ("digits", {"depth": 11, "cardinality": 2, "base_width": 2, "width": 8}),
}
_DATA_ARGS = {"shapes3d": {"num_points": 32, "n_train": 4, "n_val": 4, "n_test": 4}}


@pytest.fixture(scope="module")
def datasets():
    return {n: get_data(n, **_DATA_ARGS.get(n, {})) for n in {d for d, _ in SMALL.values()}}


@pytest.mark.parametrize("name", list(SMALL))
def test_family_builds_for_its_data(name, datasets):
    data_name, args = SMALL[name]
    data = datasets[data_name]
    model = build_for_data(name, data.input_shape, data.num_classes, **args)
    out = model(data.val.x[:3])
    assert out.shape == (3, data.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SMALL))
def test_model_config_builds_for_its_data(name, datasets):
    """configs/model/<family>.yaml (train.py model=<family>) builds a working network for the family's data."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())
    data = datasets[SMALL[name][0]]
    model = build_for_data(cfg["name"], data.input_shape, data.num_classes, **cfg["args"])
    assert model(data.val.x[:2]).shape == (2, data.num_classes)


@pytest.mark.parametrize("name", list(SMALL))
def test_prune_2x_then_save_load_identical(name, datasets, tmp_path):
    data_name, args = SMALL[name]
    data = datasets[data_name]
    model = build_for_data(name, data.input_shape, data.num_classes, **args).eval()
    x = data.val.x[:4]
    cfg = bench.FAMILIES[{"lstm": "lstm-2layer"}.get(name, name)]
    res = bench.prune_family(model, x, 2.0, cfg["ignored"])
    assert 1.8 <= res["speedup"] <= 2.4, res
    assert res["predicted_macs"] == pytest.approx(res["pruned_macs"], rel=1e-6)  # the analytic count is exact
    assert res["pruned_params"] < res["base_params"]
    save_model(model, tmp_path / name)
    loaded = load_model(tmp_path / name)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


# ------------------------------------------------------------------ custom pruners are exact
def _pruned_copy_matches_zeroed(model, zero_fn, prune_fn, x):
    """Removing units must give the same function as zeroing what they compute."""
    zeroed, pruned = model, copy.deepcopy(model)
    with torch.no_grad():
        zero_fn(zeroed)
    prune_fn(pruned)  # tracing needs autograd
    with torch.no_grad():
        return torch.allclose(zeroed(x), pruned(x), atol=1e-5), pruned


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_lstm_pruner_removes_hidden_units_exactly(num_layers):
    torch.manual_seed(0)
    model = build("lstm", input_size=8, hidden_size=12, num_layers=num_layers, head=10).eval()
    x = torch.randn(5, 8, 8)
    drop = [1, 4, 7]
    H = 12
    rows = torch.tensor([g * H + j for g in range(4) for j in drop])

    def zero(m):  # a hidden unit with zero gate pre-activations keeps c = h = 0 forever
        for l in range(num_layers):
            for n in (f"weight_ih_l{l}", f"weight_hh_l{l}", f"bias_ih_l{l}", f"bias_hh_l{l}"):
                getattr(m.lstm, n)[rows] = 0

    def cut(m):
        DG = tp.DependencyGraph().build_dependency(m, x, customized_pruners=custom_pruners())
        DG.get_pruning_group(m.lstm, pruner_for(m.lstm).prune_out_channels, idxs=drop).prune()

    ok, pruned = _pruned_copy_matches_zeroed(model, zero, cut, x)
    assert ok
    assert pruned.lstm.hidden_size == 9 and pruned.fc1.in_features == 9
    assert all(getattr(pruned.lstm, f"weight_hh_l{l}").shape == (36, 9) for l in range(num_layers))


class _BiLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 6, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


def test_lstm_pruner_refuses_bidirectional_clearly():
    lstm = nn.LSTM(4, 6, bidirectional=True)
    with pytest.raises(NotImplementedError, match="unidirectional"):
        pruner_for(lstm).prune_out_channels(lstm, [0])
    with pytest.raises(UnprunableOpError, match=r"rnn \(LSTM\).*unidirectional"):
        prune(_BiLSTM(), torch.randn(2, 5, 4), target_speedup=1.5)


def test_gat_pruner_removes_head_dimensions_exactly():
    torch.manual_seed(0)
    model = build("gat", hidden=6, heads=3, dropout=0.0).eval()
    x = torch.arange(0, 600, 7)
    drop_c = [0, 2, 5]
    idxs = [h * 6 + c for h in range(3) for c in drop_c]

    def zero(m):  # a zero head dimension leaves attention unchanged and gives elu(0) = 0 downstream
        m.conv1.lin.weight[idxs] = 0
        m.conv1.bias[idxs] = 0
        m.conv1.att_src[:, :, drop_c] = 0
        m.conv1.att_dst[:, :, drop_c] = 0

    def cut(m):
        DG = tp.DependencyGraph().build_dependency(m, x, customized_pruners=custom_pruners())
        DG.get_pruning_group(m.conv1, pruner_for(m.conv1).prune_out_channels, idxs=idxs).prune()

    ok, pruned = _pruned_copy_matches_zeroed(model, zero, cut, x)
    assert ok
    assert pruned.conv1.out_channels == 3 and pruned.conv1.heads == 3 and pruned.conv2.in_channels == 9
    with pytest.raises(ValueError, match="whole head dimensions"):
        pruner_for(pruned.conv1).prune_out_channels(pruned.conv1, [0])


# ------------------------------------------------------------------ metaprune.prune on custom layers
def _zero_removed(model, x, res):
    """Zero, in ``model``, every entry the units ``res.removed`` of a prune run own (the groups' slices)."""
    by_root = {g.root: g for g in groups(model, x, ignored=res.protected)}
    params = dict(model.named_parameters())
    with torch.no_grad():
        for root, units in res.removed.items():
            g, units = by_root[root], torch.tensor(units)
            for s in g.slices:
                params[s.param].index_fill_(s.dim, s.idxs[units], 0.0)


LSTM_GAT = {
    "lstm-2layer": (lambda: build("lstm", input_size=8, hidden_size=24, num_layers=2, head=16),
                    lambda: torch.randn(3, 8, 8)),
    "gat": (lambda: build("gat", hidden=8, heads=3, dropout=0.0), lambda: torch.arange(0, 600, 50)),
}


@pytest.mark.parametrize("name", list(LSTM_GAT))
def test_metaprune_prune_on_custom_layers_is_exact(name):
    """prune() reaches 2x measured MACs through the custom pruners, predicts them exactly, and the pruned model
    computes what the unpruned one computes with the removed units zeroed."""
    torch.manual_seed(0)
    make, inputs = LSTM_GAT[name]
    model, x = make().eval(), inputs()
    zeroed = copy.deepcopy(model)
    res = prune(model, x, target_speedup=2.0)
    assert res.speedup == pytest.approx(2.0, rel=0.05), res
    assert res.predicted_macs == pytest.approx(res.pruned_macs, rel=1e-6)
    custom_root = "lstm" if name.startswith("lstm") else "conv1"
    assert res.channels[custom_root][1] < res.channels[custom_root][0]  # the custom layer itself shrank
    _zero_removed(zeroed, x[:1], res)
    with torch.no_grad():
        torch.testing.assert_close(model(x), zeroed(x), atol=1e-5, rtol=1e-4)


def test_lstm_macs_are_counted_per_time_step():
    """macs_and_params (what prune reports) counts an LSTM once per step of a sample, whatever the batch; torch-pruning's
    counter would multiply by steps x features and divide by the batch."""
    from metaprune.metrics import macs_and_params

    model = build("lstm", input_size=8, hidden_size=16, num_layers=2, head=16)
    x = torch.randn(1, 8, 8)
    H, steps = 16, 8
    per_step = sum(4 * H * (i + H) + 10 * H + 8 * H for i in (8, H))  # |W_ih| + |W_hh|, gate arithmetic, biases
    head = (16 * 16 + 16) + (16 * 10 + 10)
    assert macs_and_params(model, x)[0] == steps * per_step + head
    # the counter adds a Linear's bias once per batch, not per sample
    batched = steps * per_step + (16 * 16 * 3 + 16 + 16 * 10 * 3 + 10) / 3
    assert macs_and_params(model, x.repeat(3, 1, 1))[0] == pytest.approx(batched, abs=1)


def test_lstm_group_slices_hold_every_gate_row_of_every_layer():
    model = build("lstm", input_size=8, hidden_size=6, num_layers=2, head=5)
    x = torch.randn(1, 8, 8)
    g = next(g for g in groups(model, x, ignored=["fc"]) if g.root == "lstm")
    assert g.units == 6 and g.custom
    H, j = 6, 4
    owned = {}
    for s in g.slices:
        owned.setdefault((s.param, s.dim), set()).add(int(s.idxs[j]))
    gates = {g_ * H + j for g_ in range(4)}
    for l in range(2):
        for p in (f"weight_ih_l{l}", f"weight_hh_l{l}", f"bias_ih_l{l}", f"bias_hh_l{l}"):
            assert owned[(f"lstm.{p}", 0)] == gates, p
        assert owned[(f"lstm.weight_hh_l{l}", 1)] == {j}
    assert owned[("lstm.weight_ih_l1", 1)] == {j} and owned[("fc1.weight", 1)] == {j}
    assert ("lstm.weight_ih_l0", 1) not in owned  # the input features are not this group's


def test_gat_group_unit_is_one_head_dimension_of_every_head():
    model = build("gat", hidden=5, heads=3)
    g = next(g for g in groups(model, torch.arange(2), ignored=["conv2"]) if g.root == "conv1")
    assert g.units == 5
    c = 2
    rows = {int(s.idxs[c]) for s in g.slices if s.param == "conv1.lin.weight" and s.dim == 0}
    assert rows == {h * 5 + c for h in range(3)}
    assert {int(s.idxs[c]) for s in g.slices if s.param == "conv2.lin.weight"} == {h * 5 + c for h in range(3)}
    assert [int(s.idxs[c]) for s in g.slices if s.param == "conv1.att_src"] == [c]  # [1, heads, C]: once


def test_gat_classifier_is_protected_automatically():
    model = build("gat", hidden=8, heads=2)
    res = prune(model, torch.arange(3), target_speedup=1.5)
    assert res.protected == ["conv2"] and model(torch.arange(3)).shape == (3, 5)


def test_gat_takes_node_ids_only():
    model = build("gat", hidden=4, heads=2)
    with pytest.raises(ValueError, match="node ids"):
        model(torch.randn(3))


# ------------------------------------------------------------------ the whole pipeline
def test_gat_trains_prunes_finetunes(tmp_path):
    row = bench.run_family("gat", quick=True, workdir=tmp_path)
    assert row["acc_before"] > 0.6 and row["acc_finetuned"] > 0.6  # chance is 0.2
    assert 1.8 <= row["speedup"] <= 2.4 and row["save_load_identical"]


@pytest.mark.slow
@pytest.mark.parametrize("family,floor", [("lstm-1layer", 0.85), ("lstm-2layer", 0.85), ("gat", 0.8),
                                          ("dgcnn", 0.6), ("densenet", 0.85), ("resnext", 0.85)])
def test_family_full_pipeline(family, floor, tmp_path):
    row = bench.run_family(family, workdir=tmp_path)
    assert row["acc_before"] >= floor, row
    assert row["acc_finetuned"] >= floor - 0.05, row
    assert 1.8 <= row["speedup"] <= 2.4 and row["save_load_identical"], row


# ------------------------------------------------------------------ torchvision grouping coverage
def _sweep():
    spec = importlib.util.spec_from_file_location("tv_sweep", ROOT / "benchmarks" / "torchvision_sweep.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x0_5"])
def test_torchvision_sweep_records_outcome(name):
    rec = _sweep().run_one(name, max_graph_params=1e6, mem_gb=None, threads=None)
    assert rec["model"] == name and rec["params"] > 0
    if rec["status"] == "pruned":
        assert 1.8 <= rec["speedup"] <= 2.4 and rec["groups"] > 0
    else:  # a failure names its stage and carries the error message
        assert rec["status"] in ("grouped", "failed") and rec["stage"] in ("group", "prune") and rec["error"]
    if name in ("resnet18", "mobilenet_v3_small", "squeezenet1_1"):
        assert rec["status"] == "pruned", rec  # the basic residual, SE/hardswish and fire-module cases work
