"""ONNX round trip: a model exported elsewhere is imported, pruned to 2x MACs, exported back and run in onnxruntime."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from onnx import TensorProto, helper

from metaprune.io import load_model, save_model
from metaprune.metrics import macs_and_params
from metaprune.models import build
from metaprune.onnx import OnnxImportError, example_inputs_for, export_onnx, import_onnx, supported_ops, verify_onnx


def _prune_to(model, x, speedup, ignored, num_steps=40):
    """Group-L2 pruning in small steps until MACs drop by ``speedup`` (torch-pruning directly)."""
    base, _ = macs_and_params(model, x)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.9, iterative_steps=num_steps, ignored_layers=ignored)
    macs = base
    for _ in range(num_steps):
        pruner.step()
        macs, _ = macs_and_params(model, x)
        if base / macs >= speedup:
            break
    return base / macs


def _foreign(tmp_path, name, **args):
    """A trained-elsewhere stand-in: a native model with non-trivial BN stats, exported by torch.onnx."""
    torch.manual_seed(0)
    model = build(name, **args)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    model.eval()
    path = export_onnx(model, torch.randn(2, 3, 32, 32), tmp_path / f"{name}.onnx")
    return model, path


@pytest.mark.parametrize("name,args", [
    ("resnet", dict(depth=20, num_classes=10, in_channels=3)),
    ("vit", dict(image_size=32, patch_size=4, depth=2, dim=64, heads=4, num_classes=10)),
])
def test_onnx_prune_round_trip(tmp_path, name, args):
    native, path = _foreign(tmp_path, name, **args)
    model = import_onnx(path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), native(x), atol=1e-5)
    example = example_inputs_for(model)
    assert example.shape == (1, 3, 32, 32)

    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 10]
    if name == "vit":  # qkv widths are tied to the head layout baked into the graph's reshapes
        ignored += [m for n, m in model.named_modules() if n.endswith("attn/qkv/MatMul")]
    speedup = _prune_to(model, example, 2.0, ignored)
    assert speedup >= 2.0
    model.eval()

    out = export_onnx(model, example, tmp_path / "pruned" / "model.onnx")
    onnx.checker.check_model(str(out))
    assert verify_onnx(model, out, torch.randn(5, 3, 32, 32)) <= 1e-4  # batch differs from the traced one

    save_model(model, tmp_path / "ckpt")
    again = load_model(tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert verify_onnx(again, export_onnx(again, example, tmp_path / "again.onnx"), x) <= 1e-4


def test_native_export_is_dynamic_batch(tmp_path):
    model = build("resnet", depth=20, num_classes=10, in_channels=1).eval()
    path = export_onnx(model, torch.randn(1, 1, 8, 8), tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert verify_onnx(model, path, torch.randn(7, 1, 8, 8)) <= 1e-4


def _graph_with(op_type, domain="", name="odd_node"):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["h"], name="relu0"),
             helper.make_node(op_type, ["h"], ["y"], name=name, domain=domain)]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=opsets)


@pytest.mark.parametrize("op,domain", [("Hardmax", ""), ("FancyGate", "com.example")])
def test_unsupported_op_is_named(tmp_path, op, domain):
    path = tmp_path / "odd.onnx"
    onnx.save(_graph_with(op, domain), str(path))
    with pytest.raises(OnnxImportError) as err:
        import_onnx(path)
    msg = str(err.value)
    assert op in msg and "odd_node" in msg and str(path) in msg
    assert "Relu" not in msg.split("supported_ops")[0]  # only the offending op is listed


def test_not_onnx_file_is_refused(tmp_path):
    bad = tmp_path / "weights.onnx"
    bad.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(OnnxImportError, match="weights.onnx"):
        import_onnx(bad)
    with pytest.raises(OnnxImportError, match="not found"):
        import_onnx(tmp_path / "missing.onnx")


def test_supported_ops_cover_common_layers():
    ops = set(supported_ops())
    assert {"Conv", "Gemm", "MatMul", "BatchNormalization", "LayerNormalization", "Relu", "Add", "Concat",
            "Reshape", "Softmax", "GlobalAveragePool", "MaxPool"} <= ops
    assert "Hardmax" not in ops
