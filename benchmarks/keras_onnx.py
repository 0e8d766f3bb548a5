"""A Keras CNN exported by tf2onnx, pruned by metaprune: ``prune.py model.onnx=`` on digits, both routes.

TensorFlow is not a metaprune dependency. The export half runs in a separate environment that has
``tensorflow-cpu`` and ``tf2onnx`` (``--tf-python``, default ``/work/tfvenv/bin/python``; made with
``python3 -m venv /work/tfvenv && /work/tfvenv/bin/pip install tensorflow-cpu tf2onnx``); it trains a small Keras
CNN (Conv2D -> BatchNormalization -> ReLU, twice, global average pooling, Dense) on metaprune's digits training
split and exports it with tf2onnx (opset 17, NCHW input). The prune half runs here: the ONNX file goes through
``prune_checkpoint`` (the ``prune.py`` pipeline) with the default metanetwork and with ``metanet=none``, 2x MACs,
5 finetuning epochs; the written ``pruned/model.onnx`` is scored in onnxruntime. Results go to
``benchmarks/results/keras_onnx.json``; where the export environment is missing, the JSON says so.

    python benchmarks/keras_onnx.py                      # project venv; calls --tf-python for the export
    python benchmarks/keras_onnx.py --tf-python /path/to/python
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "keras_onnx.json"


# --- export half: runs under --tf-python, imports only tensorflow, tf2onnx and numpy ------------------------------

def export(npz: str, out: str, epochs: int, seed: int) -> None:
    import numpy as np
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(seed)
    d = np.load(npz)
    layers = tf.keras.layers
    model = tf.keras.Sequential([
        layers.Input((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.Conv2D(32, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(),
        layers.GlobalAveragePooling2D(), layers.Dense(10),
    ])
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(d["x_train"], d["y_train"], epochs=epochs, batch_size=64, verbose=0)
    acc = float(model.evaluate(d["x_test"], d["y_test"], verbose=0)[1])
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="input"),)

    @tf.function(input_signature=spec)
    def forward(x):
        return model(x, training=False)

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=17, inputs_as_nchw=["input"])
    with open(out, "wb") as f:
        f.write(proto.SerializeToString())
    print(json.dumps({"keras_test_acc": acc, "tensorflow": tf.__version__, "tf2onnx": tf2onnx.__version__,
                      "keras": tf.keras.__version__ if hasattr(tf.keras, "__version__") else None}))


# --- prune half: the project's environment ------------------------------------------------------------------------

def _ort_acc(path, data) -> float:
    import numpy as np
    import onnxruntime as ort

    x, y = data.test.x.numpy(), data.test.y.numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float((sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})[0].argmax(1) == y).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tf-python", default="/work/tfvenv/bin/python", help="python with tensorflow-cpu and tf2onnx")
    p.add_argument("--epochs", type=int, default=30, help="Keras training epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export", nargs=2, metavar=("NPZ", "ONNX"), help=argparse.SUPPRESS)  # the export half
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    if args.export:
        return export(*args.export, args.epochs, args.seed)

    import numpy as np
    import onnx
    import torch

    from metaprune.data import get_data
    from metaprune.io import atomic_write_json
    from metaprune.prune.pipeline import prune_checkpoint

    torch.set_num_threads(1)
    data = get_data("digits")
    record = {"benchmark": "keras_onnx", "data": "digits", "target_speedup": 2.0, "finetune_epochs": 5,
              "keras_epochs": args.epochs, "seed": args.seed, "host": platform.machine(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nhwc = {f"x_{s}": getattr(data, s).x.permute(0, 2, 3, 1).numpy() for s in ("train", "test")}
        np.savez(tmp / "digits.npz", **nhwc, y_train=data.train.y.numpy(), y_test=data.test.y.numpy())
        path = tmp / "keras_cnn.onnx"
        try:
            proc = subprocess.run([args.tf_python, __file__, "--export", str(tmp / "digits.npz"), str(path),
                                   "--epochs", str(args.epochs), "--seed", str(args.seed)],
                                  capture_output=True, text=True, timeout=1800)
        except (OSError, subprocess.TimeoutExpired) as e:
            proc = None
            why = f"{type(e).__name__}: {e}"
        if proc is None or proc.returncode != 0:
            why = why if proc is None else proc.stderr.strip().splitlines()[-1]
            record["status"] = f"export not run: {args.tf_python} could not build and export the Keras model ({why})"
            atomic_write_json(args.out, record)
            print(record["status"])
            sys.exit(1)
        record["export"] = json.loads(proc.stdout.strip().splitlines()[-1])
        graph = onnx.load(str(path)).graph
        record["onnx_ops"] = sorted({n.op_type for n in graph.node})
        record["onnx_input"] = [d.dim_value or d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
        record["exported_test_acc_onnxruntime"] = _ort_acc(path, data)
        record["routes"] = {}
        for route in ("auto", "none"):
            t0 = time.perf_counter()
            rep = prune_checkpoint(None, data, 2.0, onnx=path, output_dir=tmp / f"out_{route}", metanet=route,
                                   finetune_epochs=5, progress=False)
            written = tmp / f"out_{route}" / "pruned" / "model.onnx"
            record["routes"][route] = {
                "metanet": rep["metanet"], "base_acc": rep["base_acc"], "pruned_acc": rep["pruned_acc"],
                "transformed_acc": rep.get("transformed_acc"), "final_acc": rep["final_acc"],
                "speedup": rep["speedup"], "base_params": rep["base_params"], "pruned_params": rep["pruned_params"],
                "written_onnx_test_acc_onnxruntime": _ort_acc(written, data),
                "written_onnx_ops": sorted({n.op_type for n in onnx.load(str(written)).graph.node}),
                "seconds": round(time.perf_counter() - t0, 1)}
    record["status"] = "ok"
    atomic_write_json(args.out, record)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
