"""ONNX files from other tools go through the default ``prune.py`` route: the default metanetwork applies to an
imported graph (or skips it with a note), and constant initializers that exporters leave in the graph (a
scikit-learn bias of shape [1, H], a Keras BatchNorm folded into [1, C, 1, 1] Mul/Add constants) are pruned with the
channels they scale, so the written ``pruned/model.onnx`` scores like the finetuned PyTorch model."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from metaprune.io import load_model, save_model
from metaprune.metanet.checkpoint import apply_metanet
from metaprune.models import build
from metaprune.onnx import export_onnx, import_onnx
from metaprune.prune.pipeline import prune_checkpoint

ort = pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]


def _run_onnx(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0]


def _onnx_acc(path, data) -> float:
    x, y = zip(*[data.test[i] for i in range(len(data.test))])
    x, y = torch.stack(x).numpy(), torch.as_tensor(y).numpy()
    return float((_run_onnx(path, x).argmax(1) == y).mean())


def test_metanet_keeps_an_imported_graph_prunable(tmp_path):
    """The metanetwork's rewrite copies the module: the imported graph keeps what makes it saveable as ONNX."""
    torch.manual_seed(0)
    native = build("resnet", depth=8, width=8, num_classes=10, in_channels=1).eval()
    model = import_onnx(export_onnx(native, torch.randn(1, 1, 8, 8), tmp_path / "r8.onnx"))
    out = apply_metanet("checkpoints/metanet/digits", model, torch.randn(1, 1, 8, 8))
    assert out is not model and out.metaprune_spec == model.metaprune_spec
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert out(x).shape == (3, 10) and not torch.equal(out(x), model(x))  # rewritten, same graph


def test_onnx_with_default_metanet_prunes_end_to_end(tmp_path, digits):
    torch.manual_seed(0)
    native = build("resnet", depth=8, width=8, num_classes=10, in_channels=1).eval()
    path = export_onnx(native, torch.randn(1, 1, 8, 8), tmp_path / "r8.onnx")
    report = prune_checkpoint(None, digits, 1.5, onnx=path, output_dir=tmp_path / "out", finetune_epochs=0,
                              progress=False)  # metanet="auto": the default
    assert report["model"] == "onnx" and report["metanet"] == "checkpoints/metanet/digits"
    assert report["speedup"] == pytest.approx(1.5, rel=0.1)
    written = tmp_path / "out" / "pruned" / "model.onnx"
    pruned = load_model(tmp_path / "out" / "pruned")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert np.abs(_run_onnx(written, x.numpy()) - pruned(x).numpy()).max() < 1e-4


@pytest.fixture(scope="module")
def sklearn_mlp(tmp_path_factory, digits):
    """A scikit-learn MLPClassifier trained on the flattened digits, exported by skl2onnx (biases are [1, H]
    initializers; the graph also outputs the predicted label through ai.onnx.ml ops), and the flattened data."""
    pytest.importorskip("sklearn")
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPClassifier

    from metaprune.data import DataBundle, TensorPairs

    flat = {s: TensorPairs(getattr(digits, s).x.flatten(1), getattr(digits, s).y) for s in ("train", "val", "test")}
    data = DataBundle("digits", flat["train"], flat["val"], flat["test"], 10, (64,))
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a short fit is enough here
        clf.fit(flat["train"].x.numpy(), flat["train"].y.numpy())
    proto = skl2onnx.to_onnx(clf, flat["train"].x[:1].numpy(), options={id(clf): {"zipmap": False}},
                             target_opset=17)
    path = tmp_path_factory.mktemp("skl") / "mlp.onnx"
    onnx.save(proto, str(path))
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]
    return path, data, clf.score(flat["test"].x.numpy(), flat["test"].y.numpy())


def _check_sklearn_result(out, data, sk_acc):
    report = json.loads((out / "report.json").read_text())
    assert report["base_acc"] == pytest.approx(sk_acc, abs=1e-6)  # the imported graph is the sklearn model
    assert report["speedup"] == pytest.approx(2.0, rel=0.05)
    assert report["final_acc"] >= sk_acc - 0.05
    written = out / "pruned" / "model.onnx"
    assert [o.name for o in onnx.load(str(written)).graph.output] == ["probabilities"]
    assert abs(_onnx_acc(written, data) - report["final_acc"]) <= 0.01
    return report


@pytest.mark.slow  # a prune.py subprocess: about 25 s on one core
def test_sklearn_mlp_with_the_default_command(tmp_path, sklearn_mlp):
    """``prune.py model.onnx=mlp.onnx``: digits images are flattened to the graph's 64 features, the label output is
    dropped with a note, the default metanetwork applies, and the written ONNX file scores like the PyTorch model."""
    path, data, sk_acc = sklearn_mlp
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "prune.py"), f"model.onnx={path}", "logger=none",
                           f"hydra.run.dir={tmp_path / 'hydra'}", f"output_dir={tmp_path / 'out'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "label dropped" in proc.stdout and "flattened" in proc.stdout
    report = _check_sklearn_result(tmp_path / "out", data, sk_acc)
    assert report["metanet"] == "checkpoints/metanet/digits" and report["transformed_acc"] is not None


def test_sklearn_mlp_without_metanet(tmp_path, sklearn_mlp, digits):
    path, data, sk_acc = sklearn_mlp
    prune_checkpoint(None, digits, 2.0, onnx=path, output_dir=tmp_path / "out", finetune_epochs=5, metanet="none",
                     progress=False)  # images as the data set holds them: flattened to the graph's input
    _check_sklearn_result(tmp_path / "out", data, sk_acc)


def _keras_like_cnn(path, c=8):
    """Conv -> Mul([1,C,1,1]) -> Add([1,C,1,1]) -> Relu, twice, -> GlobalAveragePool -> Flatten -> Gemm: a
    Keras BatchNorm exported as constant scale and shift (tf2onnx's form), built by hand (no tensorflow here)."""
    rng = np.random.default_rng(0)
    f = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(f(c, 3, 3, 3), "w1"), numpy_helper.from_array(f(c), "b1"),
             numpy_helper.from_array(1 + f(1, c, 1, 1), "s1"), numpy_helper.from_array(f(1, c, 1, 1), "t1"),
             numpy_helper.from_array(f(c, c, 3, 3), "w2"),
             numpy_helper.from_array(1 + f(1, c, 1, 1), "s2"), numpy_helper.from_array(f(1, c, 1, 1), "t2"),
             numpy_helper.from_array(f(5, c), "fc_w"), numpy_helper.from_array(f(5), "fc_b")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c1", "s1"], ["m1"]), helper.make_node("Add", ["m1", "t1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c2", "s2"], ["m2"]), helper.make_node("Add", ["m2", "t2"], ["a2"]),
             helper.make_node("Relu", ["a2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["fl"]),
             helper.make_node("Gemm", ["fl", "fc_w", "fc_b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "keras_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_keras_style_constant_batchnorm_is_pruned_with_its_channels(tmp_path):
    from metaprune.onnx import verify_onnx
    from metaprune.prune import prune

    path = _keras_like_cnn(tmp_path / "keras.onnx")
    model = import_onnx(path)
    x = torch.randn(1, 3, 8, 8)
    res = prune(model, x, target_speedup=1.5)
    assert res.speedup == pytest.approx(1.5, rel=0.1)
    scales = [p for n, p in model.named_parameters() if n.startswith("initializers.")]
    assert sorted(tuple(p.shape) for p in scales) == sorted([(1, res.channels[r][1], 1, 1) for r in res.channels] * 2)
    out = export_onnx(model, x, tmp_path / "pruned.onnx")
    assert verify_onnx(model, out, torch.randn(4, 3, 8, 8)) <= 1e-4


def _train_a_little(model, x, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), torch.arange(len(x)) % 5).backward()
        opt.step()
    model.eval()


@pytest.mark.parametrize("source", ["resnet", "keras"])
def test_folded_batchnorm_gets_trainable_norms_folded_back_on_export(tmp_path, source):
    """An exporter folds BatchNorm into the convs. add_norms puts a BatchNorm after each conv that feeds none,
    the identity on the given data (function unchanged); once pruned and trained they differ from the identity,
    and the written ONNX graph is the source graph with the norms folded into the convs (a conv without bias
    gets one); the checkpoint reloads with them."""
    from metaprune.onnx import add_norms, verify_onnx
    from metaprune.prune import prune

    torch.manual_seed(0)
    if source == "resnet":
        shape = (1, 8, 8)
        path = export_onnx(build("resnet", depth=8, width=8, num_classes=10, in_channels=1).eval(),
                           torch.randn(1, *shape), tmp_path / "src.onnx")
    else:
        shape, path = (3, 8, 8), _keras_like_cnn(tmp_path / "src.onnx")
    model, x = import_onnx(path), torch.randn(8, *shape)
    with torch.no_grad():
        before = model(x)
    # the source's ops less its Identity copies of weights (import makes them initializers)
    source_ops = sorted(n.op_type for n in onnx.load(str(path)).graph.node if n.op_type != "Identity")
    convs = add_norms(model, (2 * torch.randn(32, *shape) + 1).split(16))
    assert len(convs) == source_ops.count("Conv") and model.metaprune_spec["args"]["norms"] is True
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)  # the identity on the data
    prune(model, x[:1], target_speedup=1.5)
    _train_a_little(model, x)
    norm = model.get_submodule(next(iter(model.onnx_norms)))
    assert not torch.allclose(norm.running_var, torch.ones_like(norm.running_var))
    written = export_onnx(model, x[:1], tmp_path / "pruned.onnx")
    assert sorted(n.op_type for n in onnx.load(str(written)).graph.node) == source_ops  # no BatchNormalization
    assert verify_onnx(model, written, torch.randn(4, *shape)) <= 1e-4
    save_model(model, tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(again(x), model(x)) and again.onnx_norms == model.onnx_norms


@pytest.mark.slow  # two prune + finetune runs of ResNet-20 on digits: about 1 min on one core
def test_onnx_imported_resnet_finetunes_like_the_native_one(tmp_path, digits):
    """The README's ResNet-20 exported to ONNX (BatchNorm folded) ends within 1 point of the native checkpoint
    pruned the same way (measured: both 97.2%; 55.3% before the imported graph got trainable norms)."""
    native = load_model(REPO / "checkpoints" / "examples" / "resnet-digits")
    path = export_onnx(native, digits.example_inputs(1), tmp_path / "r20.onnx")
    run = dict(finetune_epochs=5, metanet="none", progress=False)
    want = prune_checkpoint(REPO / "checkpoints" / "examples" / "resnet-digits", digits, 2.0,
                            output_dir=tmp_path / "native", **run)
    got = prune_checkpoint(None, digits, 2.0, onnx=path, output_dir=tmp_path / "onnx", **run)
    assert got["final_acc"] >= want["final_acc"] - 0.01
    assert abs(_onnx_acc(tmp_path / "onnx" / "pruned" / "model.onnx", digits) - got["final_acc"]) <= 0.005


@pytest.mark.parametrize("route", [dict(), dict(stage="trained_nofinetune", importance="obs")])
def test_pruned_depthwise_conv_writes_its_groups_back(tmp_path, digits, route):
    """An imported MobileNetV2: pruning shrinks its depthwise convs' groups, and the written graph says so."""
    torch.manual_seed(0)
    native = build("mobilenet_v2", num_classes=10, in_channels=1, width_mult=0.25, last_channels=64).eval()
    path = export_onnx(native, torch.randn(1, 1, 8, 8), tmp_path / "mb.onnx")
    report = prune_checkpoint(None, digits, 1.5, onnx=path, output_dir=tmp_path / "out", finetune_epochs=0,
                              metanet="none", progress=False, **route)
    assert report["speedup"] == pytest.approx(1.5, rel=0.1)
    written = tmp_path / "out" / "pruned" / "model.onnx"
    pruned = load_model(tmp_path / "out" / "pruned")
    groups = {n.name: next(a.i for a in n.attribute if a.name == "group") for n in onnx.load(str(written)).graph.node
              if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    dw = [m.groups for m in pruned.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    before = [m.groups for m in native.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert sorted(groups.values()) == sorted(dw) and sum(dw) < sum(before)  # shrunk, and the graph agrees
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert np.abs(_run_onnx(written, x.numpy()) - pruned(x).numpy()).max() < 1e-4


def test_onnx_vit_prunes_with_its_tied_qkv_left_alone(tmp_path):
    """An exported ViT's Reshape to a constant head count ties its qkv rows in a way torch-pruning maps past the
    projection's end: that group is left alone (and reported protected), the rest prunes and exports."""
    from metaprune.onnx import verify_onnx
    from metaprune.prune import prune

    torch.manual_seed(0)
    native = build("vit", image_size=16, patch_size=4, depth=1, dim=32, heads=4, num_classes=10).eval()
    path = export_onnx(native, torch.randn(1, 3, 16, 16), tmp_path / "vit.onnx")
    model, x = import_onnx(path), torch.randn(1, 3, 16, 16)
    qkv = [n for n, _ in model.named_modules() if n.endswith("attn/qkv/MatMul")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnx2torch's Slice indexing deprecation
        res = prune(model, x, target_speedup=1.5)
        assert res.speedup == pytest.approx(1.5, rel=0.1) and set(qkv) <= set(res.protected)
        assert verify_onnx(model, export_onnx(model, x, tmp_path / "p.onnx"), torch.randn(3, 3, 16, 16)) <= 1e-4


def test_keras_result_is_recorded():
    """benchmarks/keras_onnx.py's committed result: a tf2onnx export pruned to 2x by both routes, the written ONNX
    file scoring like the finetuned PyTorch model (or, where TensorFlow could not run, the reason)."""
    r = json.loads((REPO / "benchmarks" / "results" / "keras_onnx.json").read_text())
    if r["status"] != "ok":
        assert r["status"].startswith("export not run")
        return
    assert r["exported_test_acc_onnxruntime"] == pytest.approx(r["export"]["keras_test_acc"], abs=0.005)
    assert set(r["routes"]) == {"auto", "none"}
    for route in r["routes"].values():
        assert route["speedup"] == pytest.approx(2.0, rel=0.05) and route["base_acc"] == r["exported_test_acc_onnxruntime"]
        assert abs(route["written_onnx_test_acc_onnxruntime"] - route["final_acc"]) <= 0.01
        assert "BatchNormalization" not in route["written_onnx_ops"]

