"""Bad input never destroys, hangs or crashes (issue 16): loading, data and logging.

Every case hands a loader a damaged or hostile file and checks what a user would see: one clear line naming
the file (and the key) in an exception type the CLI turns into ``error: ...``, the inputs byte-identical
afterwards, nothing written, and no long wait. FIFOs and devices run in a subprocess with a timeout, so a
regression that blocks on them fails the test instead of hanging the suite.
"""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from metaprune import build, load_model, load_state_dict_file, save_model
from metaprune.cli import UsageError
from metaprune.data import DataNotFoundError, get_data, write_cifar_fixture
from metaprune.data.fixtures import write_idx_fixture
from metaprune.io import CheckpointError
from metaprune.models import UnknownModelError

REPO = Path(__file__).resolve().parent.parent
# what metaprune.cli.friendly_errors reports as one ``error:`` line
FRIENDLY = (UsageError, CheckpointError, DataNotFoundError, UnknownModelError, ValueError, FileExistsError)
SLOW = 10.0  # seconds: a generous sanity bound for refusals that must not wait or allocate


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every entry under ``root``: file bytes, or the kind of a special file (never opened)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"link:{os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel] = "special"
    return out


def refused(root: Path, call, *match: str) -> str:
    """``call()`` fails fast with one friendly line containing every ``match``; ``root`` is left unchanged."""
    before = _tree(root)
    start = time.perf_counter()
    with pytest.raises(FRIENDLY) as e:
        call()
    took = time.perf_counter() - start
    msg = str(e.value)
    assert "\n" not in msg, msg
    for m in match:
        assert m in msg, f"{m!r} not in {msg!r}"
    assert took < SLOW, f"refusal took {took:.1f}s"
    assert _tree(root) == before, "the inputs changed or something was written"
    return msg


@pytest.fixture(autouse=True)
def _global_rng_left_as_found():
    """These tests build models and draw inputs; later tests that rely on the global RNG see no difference."""
    with torch.random.fork_rng():
        yield


# --- checkpoints: spec.json -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt_bytes(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck") / "model"
    with torch.random.fork_rng():
        save_model(build("resnet", depth=8, width=4), d)
    return {f: (d / f).read_bytes() for f in ("spec.json", "model.safetensors")}


@pytest.fixture
def ckpt(tmp_path, ckpt_bytes):
    d = tmp_path / "model"
    d.mkdir()
    for f, b in ckpt_bytes.items():
        (d / f).write_bytes(b)
    return d


def _edit_spec(d: Path, edit) -> None:
    spec = json.loads((d / "spec.json").read_text())
    edit(spec)
    (d / "spec.json").write_text(json.dumps(spec))


SPEC_CASES = [  # id, edit of the spec, parts of the message
    ("depth-999998", lambda s: s["args"].update(depth=999998), ["depth=999998", "too large", "budget"]),
    ("width-4000", lambda s: s["args"].update(width=4000), ["width=4000", "too large", "2,000,000,000 parameters"]),
    ("attr-stride", lambda s: s["attrs"].update({"conv1": {"stride": [2, 2]}}), ["attrs.conv1.stride", "refused"]),
    ("attr-eps", lambda s: s["attrs"].update({"bn1": {"eps": 1000}}), ["attrs.bn1.eps", "refused"]),
    ("attr-method", lambda s: s["attrs"].update({"": {"forward": "x"}}), ["attrs.forward", "refused"]),
    ("attr-type", lambda s: s["attrs"].update({"bn1": {"num_features": "4"}}), ["attrs.bn1.num_features", "integer"]),
    ("attr-bool", lambda s: s["attrs"].update({"conv1": {"groups": True}}), ["attrs.conv1.groups", "integer"]),
    ("attr-no-module", lambda s: s["attrs"].update({"nowhere": {"num_features": 4}}), ["attrs.nowhere", "no module"]),
    ("attr-not-on-module", lambda s: s["attrs"].update({"conv1": {"num_heads": 2}}), ["attrs.conv1.num_heads"]),
    ("tv-download", lambda s: s.update(name="tv:resnet18", args={"weights": "DEFAULT"}),
     ["args.weights='DEFAULT'", "never downloads"]),
    ("tv-pretrained", lambda s: s.update(name="tv:resnet18", args={"pretrained": True}), ["args.pretrained=True"]),
    ("huge-shape", lambda s: s["shapes"].update({"fc.weight": [100000, 100000]}), ["shapes.fc.weight", "budget"]),
    ("bad-shape", lambda s: s["shapes"].update({"fc.weight": [-1, 3]}), ["shapes.fc.weight", "non-negative"]),
    ("args-list", lambda s: s.update(args=[1, 2]), ["'args' must be a JSON object"]),
    ("args-type", lambda s: s["args"].update(depth="abc"), ["cannot rebuild model 'resnet'"]),
    ("args-unknown", lambda s: s["args"].update(colour=3), ["takes no argument(s) ['colour']"]),
    ("unknown-model", lambda s: s.update(name="nonesuch"), ["unknown model 'nonesuch'"]),
]


@pytest.mark.parametrize("edit,match", [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_is_refused_fast_naming_the_key(ckpt, edit, match):
    _edit_spec(ckpt, edit)
    msg = refused(ckpt.parent, lambda: load_model(ckpt), str(ckpt / "spec.json"), *match)
    assert "Traceback" not in msg


@pytest.mark.parametrize("text,match", [
    ("{not json", "not a valid spec file"),
    ("[1, 2]", "spec has no model 'name'"),
    ("\xff\xfe", "not a valid spec file"),
    ("[" * 100000 + "]" * 100000, "not a valid spec file"),
], ids=["syntax", "list", "not-utf8", "deep-nesting"])
def test_spec_that_is_not_a_spec(ckpt, text, match):
    (ckpt / "spec.json").write_bytes(text.encode("latin1"))
    refused(ckpt.parent, lambda: load_model(ckpt), str(ckpt / "spec.json"), match)


def test_oversized_spec_is_refused_before_reading(ckpt, monkeypatch):
    monkeypatch.setattr("metaprune.io.MAX_JSON_BYTES", 100)
    refused(ckpt.parent, lambda: load_model(ckpt), "spec.json", "over the 100-byte limit")


def test_spec_limits_keep_real_checkpoints_loading(ckpt):
    model = load_model(ckpt)  # the table above refuses; an intact checkpoint still loads and runs
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_non_finite_checkpoint_weights_are_refused(ckpt):
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "model.safetensors"))
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, str(ckpt / "model.safetensors"))
    refused(ckpt.parent, lambda: load_model(ckpt), "model.safetensors", "NaN or Inf", "fc.weight")


def test_truncated_checkpoint_weights_are_refused(ckpt):
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    refused(ckpt.parent, lambda: load_model(ckpt), str(w), "not a readable safetensors file")


def test_integer_weights_in_a_checkpoint_are_refused_not_cast(ckpt):
    from safetensors.torch import load_file, save_file

    state = load_file(str(ckpt / "model.safetensors"))
    state["fc.weight"] = state["fc.weight"].to(torch.int8)
    save_file(state, str(ckpt / "model.safetensors"))
    refused(ckpt.parent, lambda: load_model(ckpt), "model.safetensors", "non-float weights", "fc.weight torch.int8")


# --- plain state dicts --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content,match", [
    ("empty.pt", b"", "not a PyTorch checkpoint"),
    ("junk.pth", b"\x80\x02junk", "not a PyTorch checkpoint"),
    ("empty.safetensors", b"", "not a readable safetensors file"),
    ("nan.pt", "nan", "NaN or Inf"),
    ("nan.safetensors", "nan", "NaN or Inf"),
    ("list.pt", "list", "not a state dict"),
], ids=lambda v: v if isinstance(v, str) and "." in v else None)
def test_bad_state_dict_file(tmp_path, name, content, match):
    from safetensors.torch import save_file

    path = tmp_path / name
    if content == "nan":
        state = {"w": torch.tensor([1.0, float("inf")])}
        save_file(state, str(path)) if name.endswith(".safetensors") else torch.save(state, path)
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    else:
        path.write_bytes(content)
    refused(tmp_path, lambda: load_state_dict_file(path), str(path), match)


# --- FIFOs and devices: refused at once, never opened ----------------------------------------------------------

_SPECIAL_RUNNER = r"""
import json, sys
from pathlib import Path
from metaprune.io import load_model, load_state_dict_file
from metaprune.metanet import load_metanet
from metaprune.onnx import import_onnx
from metaprune.zoo import load_zoo
calls = {"spec": lambda d: load_model(d / "model"), "weights": lambda d: load_model(d / "model"),
         "pt": lambda d: load_state_dict_file(d / "state.pt"),
         "safetensors": lambda d: load_state_dict_file(d / "state.safetensors"),
         "onnx": lambda d: import_onnx(d / "model.onnx"), "metanet-config": lambda d: load_metanet(d / "metanet"),
         "metanet-weights": lambda d: load_metanet(d / "metanet"), "zoo-index": lambda d: load_zoo(d / "zoo")}
for line in sys.stdin:
    case, folder = json.loads(line)
    try:
        calls[case](Path(folder))
        out = {"case": case, "error": None}
    except Exception as e:
        out = {"case": case, "type": type(e).__name__, "error": str(e)}
    print(json.dumps(out), flush=True)
"""

SPECIAL_TARGETS = {  # case -> (file the loader is handed, message part)
    "spec": ("model/spec.json", "not a regular file"),
    "weights": ("model/model.safetensors", "not a regular file"),
    "pt": ("state.pt", "not a regular file"),
    "safetensors": ("state.safetensors", "not a regular file"),
    "onnx": ("model.onnx", "not a regular file"),
    "metanet-config": ("metanet/config.json", "not a metanetwork checkpoint"),
    "metanet-weights": ("metanet/metanet.safetensors", "not a metanetwork checkpoint"),
    "zoo-index": ("zoo/index.json", "not a regular file"),
}


@pytest.fixture(scope="module")
def special_results(tmp_path_factory, ckpt_bytes):
    """Each loader handed a FIFO and a link to /dev/zero, all in one subprocess with a timeout."""
    root = tmp_path_factory.mktemp("special")
    jobs = []
    for kind in ("fifo", "devzero"):
        for case, (rel, _) in SPECIAL_TARGETS.items():
            folder = root / f"{kind}-{case}"
            (folder / "model").mkdir(parents=True)
            for f, b in ckpt_bytes.items():
                (folder / "model" / f).write_bytes(b)
            (folder / "metanet").mkdir()
            (folder / "metanet" / "config.json").write_text('{"metanet": {}}')
            (folder / "metanet" / "metanet.safetensors").write_bytes(b"")
            (folder / "zoo").mkdir()
            target = folder / rel
            if target.exists():
                target.unlink()
            os.mkfifo(target) if kind == "fifo" else os.symlink("/dev/zero", target)
            jobs.append((f"{kind}-{case}", case, folder))
    before = _tree(root)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _SPECIAL_RUNNER], env=env, timeout=240, capture_output=True,
                          text=True, input="".join(json.dumps([c, str(f)]) + "\n" for _, c, f in jobs))
    took = time.perf_counter() - start
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == len(jobs), proc.stderr[-2000:]
    assert _tree(root) == before
    return {job: (out, took) for (job, _, _), out in zip(jobs, lines)}


@pytest.mark.parametrize("kind", ["fifo", "devzero"])
@pytest.mark.parametrize("case", list(SPECIAL_TARGETS))
def test_fifo_or_device_is_refused_without_reading(special_results, kind, case):
    out, took = special_results[f"{kind}-{case}"]
    rel, match = SPECIAL_TARGETS[case]
    assert out["error"] is not None and out["type"] in {t.__name__ for t in FRIENDLY} | {"OnnxImportError"}, out
    assert match in out["error"] and "\n" not in out["error"], out
    assert rel.split("/")[-1] in out["error"] or rel.split("/")[0] in out["error"], out
    assert took < 120  # every refusal, plus the interpreter start, in one process


# --- metanetwork checkpoints -----------------------------------------------------------------------------------

@pytest.fixture
def metanet_dir(tmp_path):
    from metaprune.metanet import Metanet, save_metanet

    return save_metanet(Metanet(["conv"], {"linear": 1}, 4, hidden=8, layers=1), tmp_path / "metanet")


def _edit_config(d: Path, edit) -> None:
    cfg = json.loads((d / "config.json").read_text())
    edit(cfg["metanet"])
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(hidden=10**9), ["hidden=1000000000", "too large"]),
    (lambda c: c.update(hidden=1e9), ["config.json", "cannot rebuild the metanetwork"]),
    (lambda c: c.update(layers=10**6), ["layers=1000000", "too large"]),
    (lambda c: c.update(aggr="median"), ["aggr"]),
    (lambda c: c.clear(), ["cannot rebuild the metanetwork"]),
], ids=["hidden-1e9", "hidden-float", "layers-1e6", "bad-aggr", "empty"])
def test_bad_metanet_config_is_refused_fast(metanet_dir, edit, match):
    from metaprune.metanet import load_metanet

    _edit_config(metanet_dir, edit)
    refused(metanet_dir.parent, lambda: load_metanet(metanet_dir), *match)


@pytest.mark.parametrize("damage,match", [
    ("truncate", "not a readable safetensors file"),
    ("nan", "NaN or Inf"),
    ("config-not-json", "not a valid metanetwork config"),
    ("config-huge", "over the 1,048,576-byte limit"),
])
def test_damaged_metanet_files_are_refused(metanet_dir, damage, match):
    from safetensors.torch import load_file, save_file

    from metaprune.metanet import load_metanet

    w = metanet_dir / "metanet.safetensors"
    if damage == "truncate":
        w.write_bytes(w.read_bytes()[:200])
    elif damage == "nan":
        state = load_file(str(w))
        key = next(iter(state))
        state[key].view(-1)[0] = float("nan")
        save_file(state, str(w))
    elif damage == "config-not-json":
        (metanet_dir / "config.json").write_text("{")
    else:
        (metanet_dir / "config.json").write_text(json.dumps({"metanet": {}, "pad": "x" * (1 << 20)}))
    refused(metanet_dir.parent, lambda: load_metanet(metanet_dir), str(metanet_dir), match)


# --- ONNX ------------------------------------------------------------------------------------------------------

def _gemm_onnx(path: Path, weight: np.ndarray) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.zeros(3, np.float32), "b")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("weight,match", [
    (np.full((3, 4), np.nan, np.float32), "weight 'W' holds NaN or Inf"),
    (np.array([[np.inf] * 4] * 3, np.float32), "weight 'W' holds NaN or Inf"),
    (np.ones((3, 4), np.int8), "weight 'W' of Gemm node 'fc' is int8"),
    (np.ones((3, 4), bool), "weight 'W' of Gemm node 'fc' is bool"),
], ids=["nan", "inf", "int8", "bool"])
def test_onnx_with_unusable_weights_is_refused_naming_the_file(tmp_path, weight, match):
    from metaprune.onnx import import_onnx

    path = _gemm_onnx(tmp_path / "model.onnx", weight)
    refused(tmp_path, lambda: import_onnx(path), f"{path}: refused", match)


def test_onnx_float_weights_still_import(tmp_path):
    from metaprune.onnx import import_onnx

    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    model = import_onnx(_gemm_onnx(tmp_path / "model.onnx", w))
    torch.testing.assert_close(model(torch.ones(1, 4)), torch.from_numpy(w.sum(1))[None])


def test_onnx_external_data_outside_its_folder_is_refused(tmp_path):
    import onnx

    from metaprune.onnx import import_onnx

    (tmp_path / "m").mkdir()
    path = _gemm_onnx(tmp_path / "m" / "model.onnx", np.ones((3, 4), np.float32))
    proto = onnx.load(str(path))
    w = next(t for t in proto.graph.initializer if t.name == "W")
    w.ClearField("float_data"), w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    w.external_data.add(key="location", value="../secret.bin")
    (tmp_path / "secret.bin").write_bytes(np.ones(12, np.float32).tobytes())
    onnx.save(proto, str(path))
    refused(tmp_path, lambda: import_onnx(path), str(path), "'../secret.bin'", "outside the model's folder")


def test_stored_onnx_graph_bomb_is_bounded(monkeypatch):
    import base64
    import zlib

    from metaprune.onnx import OnnxImportError, _unpack

    monkeypatch.setattr("metaprune.onnx.MAX_ONNX_BYTES", 1 << 20)
    bomb = base64.b64encode(zlib.compress(bytes(8 << 20), 9)).decode()
    with pytest.raises(OnnxImportError, match="over the 1,048,576-byte limit"):
        _unpack(bomb)


# --- data ------------------------------------------------------------------------------------------------------

def _cifar_batch(path: Path, labels, n_images: int, key: str = "labels") -> None:
    with open(path, "wb") as f:
        pickle.dump({"data": np.zeros((n_images, 3072), np.uint8), key: labels}, f)


@pytest.mark.parametrize("labels,n_images,match", [
    (list(range(10)) * 2, 19, "holds 19 images but 20 labels"),
    ([999] * 20, 20, "labels outside 0..9 (999..999)"),
    ([-5] + [0] * 19, 20, "labels outside 0..9 (-5..0)"),
    ([0.5] * 20, 20, "not integers"),
    (["cat"] * 20, 20, "not integers"),
], ids=["count", "999", "negative", "float", "str"])
def test_bad_cifar_labels_are_refused(tmp_path, labels, n_images, match):
    root = write_cifar_fixture(tmp_path / "c", n_train=10, n_test=20)
    batch = root / "cifar-10-batches-py" / "test_batch"
    _cifar_batch(batch, labels, n_images)
    refused(tmp_path, lambda: get_data("cifar10", root=root), str(batch), match)


def test_cifar100_label_range_is_its_own(tmp_path):
    root = write_cifar_fixture(tmp_path / "c", n_train=10, n_test=20, variant="cifar100")
    batch = root / "cifar-100-python" / "test"
    _cifar_batch(batch, [100] * 20, 20, key="fine_labels")
    refused(tmp_path, lambda: get_data("cifar100", root=root), "labels outside 0..99 (100..100)")
    _cifar_batch(batch, [99] * 20, 20, key="fine_labels")
    assert set(get_data("cifar100", root=root, val_size=2).test.targets) == {99}


def _svhn(root: Path, y, n_images: int = 10) -> None:
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    savemat(root / "train_32x32.mat", {"X": rng.integers(0, 255, (32, 32, 3, 30), dtype=np.uint8),
                                       "y": rng.integers(1, 11, (30, 1))})
    savemat(root / "test_32x32.mat", {"X": rng.integers(0, 255, (32, 32, 3, n_images), dtype=np.uint8), "y": y})


@pytest.mark.parametrize("y,n_images,match", [
    (np.ones((9, 1)), 10, "holds 10 images but 9 labels"),
    (np.full((10, 1), 11), 10, "labels outside 1..10 (11..11)"),
    (np.zeros((10, 1)), 10, "labels outside 1..10 (0..0)"),
    (np.full((10, 1), -5), 10, "labels outside"),
    (np.full((10, 1), 2.5), 10, "not integers"),
], ids=["count", "11", "zero", "negative", "float"])
def test_bad_svhn_labels_are_refused(tmp_path, y, n_images, match):
    _svhn(tmp_path / "s", y, n_images)
    refused(tmp_path, lambda: get_data("svhn", root=tmp_path / "s", val_size=5), "test_32x32.mat", match)


def test_svhn_double_labels_as_matlab_stores_them_load(tmp_path):
    _svhn(tmp_path / "s", np.arange(1, 11, dtype=np.float64)[:, None])
    assert sorted(int(get_data("svhn", root=tmp_path / "s", val_size=5).test[i][1]) for i in range(10)) == list(range(10))


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "imagenet", "fashion_mnist"])
def test_data_root_that_is_a_file_is_one_clear_error(tmp_path, name):
    f = tmp_path / "file.txt"
    f.write_text("not a folder")
    refused(tmp_path, lambda: get_data(name, root=f), f"data.root={str(f)!r} is not a folder")


def test_fashion_mnist_labels_out_of_range(tmp_path, monkeypatch):
    import gzip

    monkeypatch.delenv("DATA_ROOT", raising=False)
    root = write_idx_fixture(tmp_path / "f", n_train=60, n_test=20)
    labels = root / "t10k-labels-idx1-ubyte.gz"
    header = (0x0801).to_bytes(4, "big") + (20).to_bytes(4, "big")
    labels.write_bytes(gzip.compress(header + bytes([12] * 20)))
    refused(tmp_path, lambda: get_data("fashion_mnist", root=root, val_size=10), str(labels),
            "labels outside 0..9 (12..12)")


# --- zoo index -------------------------------------------------------------------------------------------------

@pytest.fixture
def zoo_dir(tmp_path, ckpt_bytes):
    root = tmp_path / "zoo"
    (root / "m1").mkdir(parents=True)
    for f, b in ckpt_bytes.items():
        (root / "m1" / f).write_bytes(b)
    (tmp_path / "outside").mkdir()
    for f, b in ckpt_bytes.items():
        (tmp_path / "outside" / f).write_bytes(b)
    index = {"members": {"m1": {"family": "resnet", "path": "m1"}}, "split": {"train": ["m1"], "val": [], "heldout": []}}
    (root / "index.json").write_text(json.dumps(index))
    return root


ZOO_CASES = [
    ("not-json", lambda i: "{", "not a valid zoo index"),
    ("list", lambda i: [], "not a zoo index"),
    ("no-members", lambda i: {"split": i["split"]}, "not a zoo index"),
    ("member-not-object", lambda i: {**i, "members": {"m1": 3}}, "members.m1 must be an object"),
    ("path-parent", lambda i: {**i, "members": {"m1": {"path": "../outside"}}}, "members.m1.path='../outside'"),
    ("path-absolute", lambda i: {**i, "members": {"m1": {"path": "/etc"}}}, "members.m1.path='/etc'"),
    ("path-root", lambda i: {**i, "members": {"m1": {"path": "."}}}, "members.m1.path='.'"),
    ("name-parent", lambda i: {"members": {"../outside": {}}, "split": {"train": ["../outside"]}},
     "members.../outside.path='../outside'"),
    ("split-unknown-member", lambda i: {**i, "split": {"train": ["m1", "ghost"]}}, "split.train names members"),
    ("split-unknown", lambda i: {**i, "split": {"test": ["m1"]}}, "split.test is not one of"),
]


@pytest.mark.parametrize("edit,match", [c[1:] for c in ZOO_CASES], ids=[c[0] for c in ZOO_CASES])
def test_broken_zoo_index_is_one_clear_error(zoo_dir, edit, match):
    from metaprune.zoo import load_zoo

    index = edit(json.loads((zoo_dir / "index.json").read_text()))
    (zoo_dir / "index.json").write_text(index if isinstance(index, str) else json.dumps(index))
    refused(zoo_dir.parent, lambda: load_zoo(zoo_dir), str(zoo_dir / "index.json"), match)


def test_intact_zoo_index_loads_its_member(zoo_dir):
    from metaprune.zoo import load_zoo

    zoo = load_zoo(zoo_dir)
    assert zoo.names("train") == ["m1"] and zoo.load("m1")(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# --- wandb without a network -----------------------------------------------------------------------------------

def test_wandb_online_without_network_goes_offline_within_the_bound(tmp_path, monkeypatch):
    from metaprune.logging import make_logger

    # online, with a key, against a port nothing listens on: no traffic leaves this machine
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger = make_logger({"kind": "wandb", "mode": "online", "init_timeout": 2, "project": "bad-inputs"},
                             dir=str(tmp_path))
        logger.log({"loss": 1.0}, step=0)
        logger.finish()
    took = time.perf_counter() - start
    ours = [w for w in caught if "wandb" in str(w.message)]
    assert len(ours) == 1 and "logs offline" in str(ours[0].message), [str(w.message) for w in caught]
    assert logger._run is not None and logger._run.settings.mode == "offline"
    assert list(tmp_path.rglob("offline-run-*")), "no offline run was written"
    assert took < 60, f"wandb fallback took {took:.0f}s (its own default waits ~90 s)"


@pytest.mark.parametrize("bad", [0, -1, "abc", True])
def test_wandb_init_timeout_is_validated(bad):
    from metaprune.logging import make_logger

    with pytest.raises(ValueError, match="logger.init_timeout"):
        make_logger({"kind": "wandb", "init_timeout": bad})



# --- one error line at the CLI boundary -----------------------------------------------------------------------

def _script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"entry_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry_error(tmp_path, capsys, name: str, *overrides) -> tuple[int, str]:
    """``name``.py's config composed by Hydra with ``overrides`` and run through its error boundary in this process:
    (exit code, stderr). Every case here is refused while the config is checked, before anything is loaded."""
    from hydra import compose, initialize_config_dir

    from metaprune.cli import friendly_errors, to_dict
    from metaprune.prune.pipeline import run_prune

    out = [f"output_dir={tmp_path / 'out'}"] if name in ("prune", "train") else []
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(name, overrides=["logger=none", *out, *overrides])
    capsys.readouterr()
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exc:
        if name == "prune":  # prune.py's main adds Hydra's run dir, which a composed config has not got
            friendly_errors(run_prune)(to_dict(cfg), progress=False)
        else:
            _script(name).main(cfg)  # a config handed to a @hydra.main function runs it directly
    assert time.perf_counter() - start < SLOW
    assert not (tmp_path / "out").exists()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("name,overrides,message", [
    ("prune", ["finetune.epochs=abc"], "finetune.epochs='abc' must be an integer >= 0"),
    ("prune", ["finetune.epochs=1.5"], "finetune.epochs=1.5 must be an integer >= 0"),
    ("prune", ["finetune.lr=abc"], "finetune.lr='abc' must be a number"),
    ("prune", ["seed=abc"], "seed='abc' must be an integer >= 0"),
    ("prune", ["threads=-1"], "threads=-1 must be an integer >= 1"),
    ("prune", ["device=banana"], "device='banana' is invalid: give auto, cpu, cuda or cuda:N"),
    ("prune", ["prune.round_to=abc"], "prune.round_to='abc' is invalid: must be null, auto or an integer >= 1"),
    ("prune", ["latency.runs=0"], "latency.runs=0 is invalid: must be an integer > 0"),
    ("prune", ["latency.batch_size=0"], "latency.batch_size=0 is invalid: must be an integer > 0"),
    ("prune", ["logger=wandb", "logger.init_timeout=0"], "logger.init_timeout=0 is invalid"),
    ("prune", ["logger=wandb", "logger.init_timeout=abc"], "logger.init_timeout='abc' is invalid"),
    ("train", ["optim.epochs=abc"], "optim.epochs='abc' must be an integer"),
    ("train", ["optim.lr=abc"], "optim.lr='abc' must be a number"),
    ("train", ["seed=abc"], "seed='abc' must be an integer >= 0"),
    ("train", ["device=banana"], "device='banana' is invalid"),
    ("train", ["logger=wandb", "logger.init_timeout=-1"], "logger.init_timeout=-1 is invalid"),
    ("train_meta", ["seed=abc"], "seed='abc' must be an integer >= 0"),
    ("train_meta", ["meta_optim.lr=abc"], "meta_optim.lr='abc' must be a number"),
    ("train_meta", ["device=banana"], "device='banana' is invalid"),
])
def test_bad_config_value_is_one_error_line_naming_the_key(tmp_path, capsys, name, overrides, message):
    code, err = _entry_error(tmp_path, capsys, name, *overrides)
    assert code == 2
    assert err.startswith(f"error: {message}") and err.count("\n") == 1 and "Traceback" not in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["prune", "train", "train_meta"])
def test_cuda_without_a_gpu_is_one_error_line(tmp_path, capsys, name):
    code, err = _entry_error(tmp_path, capsys, name, "device=cuda")
    assert code == 2
    assert err == "error: device='cuda': no CUDA device is available here; use device=cpu or device=auto\n"


@pytest.mark.parametrize("name,override,message", [
    ("prune.py", "threads=-1", "error: threads=-1 must be an integer >= 1"),
    ("train.py", "optim.epochs=abc", "error: optim.epochs='abc' must be an integer"),
    ("train_meta.py", "meta_optim.lr=abc", "error: meta_optim.lr='abc' must be a number"),
])
def test_real_cli_prints_one_line_and_exits_non_zero(tmp_path, name, override, message):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    out = [f"output_dir={tmp_path / 'out'}"] if name != "train_meta.py" else [f"out_root={tmp_path / 'out'}"]
    proc = subprocess.run([sys.executable, str(REPO / name), f"hydra.run.dir={tmp_path / 'hydra'}", "logger=none",
                           *out, override], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stdout
    assert proc.stderr.strip() == message, proc.stderr
    assert not (tmp_path / "out").exists()


def test_internal_error_keeps_its_traceback_and_says_it_is_a_bug(capsys):
    from metaprune.cli import friendly_errors

    def broken():
        return {}["a key metaprune forgot"]

    with pytest.raises(SystemExit) as exc:
        friendly_errors(broken)()
    err = capsys.readouterr().err
    assert exc.value.code == 1
    assert "Traceback" in err and "KeyError: 'a key metaprune forgot'" in err
    assert err.strip().splitlines()[-1].startswith("error: internal error: this is a bug in metaprune")


def test_os_error_is_one_error_line_naming_the_file(tmp_path, capsys):
    from metaprune.cli import friendly_errors

    def write():
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    with pytest.raises(SystemExit) as exc:
        friendly_errors(write)()
    assert exc.value.code == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'locked'}: Permission denied\n"
