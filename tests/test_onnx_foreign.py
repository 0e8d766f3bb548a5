"""ONNX files from other tools go through the default ``prune.py`` route: the default metanetwork applies to an
imported graph (or skips it with a note), and constant initializers that exporters leave in the graph (a
scikit-learn bias of shape [1, H], a Keras BatchNorm folded into [1, C, 1, 1] Mul/Add constants) are pruned with the
channels they scale, so the written ``pruned/model.onnx`` scores like the finetuned PyTorch model."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from metaprune.io import load_model
from metaprune.metanet.checkpoint import apply_metanet
from metaprune.models import build
from metaprune.onnx import export_onnx, import_onnx
from metaprune.prune.pipeline import prune_checkpoint

ort = pytest.importorskip("onnxruntime")


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
