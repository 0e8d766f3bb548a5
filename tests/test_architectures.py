"""Non-CNN families (LSTM, GAT, DGCNN) and DenseNet/ResNeXt: data, forward, exact custom pruners, 2x MACs
pruning, save/load of the pruned model, and (slow) train -> prune -> finetune accuracy."""
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
from metaprune.models import build, build_for_data, gnn, sequence

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
    "gat": ("sbm", {"hidden": 4, "heads": 2}),
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
def test_prune_2x_then_save_load_identical(name, datasets, tmp_path):
    data_name, args = SMALL[name]
    data = datasets[data_name]
    model = build_for_data(name, data.input_shape, data.num_classes, **args).eval()
    x = data.val.x[:4]
    cfg = bench.FAMILIES[{"lstm": "lstm-2layer"}.get(name, name)]
    model, res = bench.prune_family(model, x, 2.0, cfg["ignored"], cfg["metaprune"], steps=6)
    assert 1.8 <= res["speedup"] <= 2.4, res
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

    def prune(m):
        DG = tp.DependencyGraph().build_dependency(m, x, customized_pruners=sequence.PRUNERS)
        DG.get_pruning_group(m.lstm, sequence.PRUNERS[nn.LSTM].prune_out_channels, idxs=drop).prune()

    ok, pruned = _pruned_copy_matches_zeroed(model, zero, prune, x)
    assert ok
    assert pruned.lstm.hidden_size == 9 and pruned.fc1.in_features == 9
    assert all(getattr(pruned.lstm, f"weight_hh_l{l}").shape == (36, 9) for l in range(num_layers))


def test_lstm_pruner_refuses_bidirectional_clearly():
    lstm = nn.LSTM(4, 6, bidirectional=True)
    with pytest.raises(NotImplementedError, match="unidirectional"):
        sequence.PRUNERS[nn.LSTM].prune_out_channels(lstm, [0])


def test_gat_pruner_removes_head_dimensions_exactly():
    torch.manual_seed(0)
    model = build("gat", hidden=6, heads=3, dropout=0.0).eval()
    x = torch.arange(0, 600, 7)
    drop_c = [0, 2, 5]
    idxs = [h * 6 + c for h in range(3) for c in drop_c]
    conv_type = type(model.conv1)

    def zero(m):  # a zero head dimension leaves attention unchanged and gives elu(0) = 0 downstream
        m.conv1.lin.weight[idxs] = 0
        m.conv1.bias[idxs] = 0
        m.conv1.att_src[:, :, drop_c] = 0
        m.conv1.att_dst[:, :, drop_c] = 0

    def prune(m):
        DG = tp.DependencyGraph().build_dependency(m, x, customized_pruners=gnn.PRUNERS)
        DG.get_pruning_group(m.conv1, gnn.PRUNERS[conv_type].prune_out_channels, idxs=idxs).prune()

    ok, pruned = _pruned_copy_matches_zeroed(model, zero, prune, x)
    assert ok
    assert pruned.conv1.out_channels == 3 and pruned.conv1.heads == 3 and pruned.conv2.in_channels == 9
    with pytest.raises(ValueError, match="whole head dimensions"):
        gnn.PRUNERS[conv_type].prune_out_channels(pruned.conv1, [0])


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
