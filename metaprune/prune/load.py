"""The pipeline's load stage: the data, and the network to prune from a metaprune checkpoint directory, a plain
state dict with its architecture (``model.name``), an ONNX file, or (``stage=init``) a fresh build."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..cli import UsageError
from ..data import DataBundle, get_data
from ..io import CheckpointError, load_into, load_model, load_state_dict_file
from ..models import build_for_data
from ..train import seed_everything, split_data_cfg


def load_network(model_cfg: dict, data: DataBundle) -> nn.Module:
    """A metaprune checkpoint directory, ``model.name`` + a plain state dict file (never unpickling code), or an
    ONNX file (``model.onnx``, converted with onnx2torch)."""
    if model_cfg.get("onnx"):
        from ..onnx import import_onnx

        return import_onnx(model_cfg["onnx"]).eval()
    ckpt = model_cfg.get("checkpoint")
    if not ckpt:
        raise UsageError("model.checkpoint is required: a metaprune checkpoint directory or a state dict file")
    path = Path(ckpt)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        return load_model(path)
    name = model_cfg.get("name")
    if not name:
        raise UsageError(f"{path} is a plain weights file: say which architecture it holds with model.name "
                         "(a registry name such as resnet, or tv:<torchvision name>)")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read checkpoint ({e.strerror})") from None
    state = load_state_dict_file(path)
    model = build_for_data(name, data.input_shape, data.num_classes, **dict(model_cfg.get("args") or {}))
    return load_into(model, state, path).eval()


def check_fits_data(model: nn.Module, data: DataBundle, device) -> None:
    x = data.example_inputs(2).to(device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as e:
        raise UsageError(f"the checkpoint's network does not accept {data.name} inputs of shape "
                         f"{tuple(data.input_shape)}: {str(e).splitlines()[0]}") from None
    if out.dim() != 2 or out.shape[1] != data.num_classes:
        raise UsageError(f"the checkpoint's network outputs {tuple(out.shape[1:])} per example; "
                         f"{data.name} has {data.num_classes} classes")


def load(cfg, device, data: DataBundle | None = None) -> tuple[nn.Module, DataBundle]:
    """``(network on device, data)`` for the run ``cfg`` (a :class:`~metaprune.prune.config.PruneConfig`);
    ``data``: a prebuilt DataBundle (tests)."""
    if data is None:
        data = get_data(**split_data_cfg(cfg.data)[0])
    src = cfg.model
    if cfg.stage == "init" and not src.checkpoint and not src.onnx:  # a fresh network (PruneConfig checked name)
        seed_everything(cfg.seed)
        model = build_for_data(src.name, data.input_shape, data.num_classes, **dict(src.args or {}))
    else:
        model = load_network(vars(src), data)
    data = flatten_for(model, data)
    model = model.to(device)
    check_fits_data(model, data, device)
    if cfg.stage != "trained_nofinetune":
        add_norms_for_training(model, data, device)
    return model, data


def add_norms_for_training(model: nn.Module, data: DataBundle, device, examples: int = 1024) -> None:
    """An imported ONNX graph whose convs feed no norm (its exporter folded BatchNorm into them) gets a BatchNorm
    after each, the identity on ``examples`` training examples, so it finetunes like the network it was exported
    from (see :func:`metaprune.onnx.add_norms`); said in a note. Other models are left as they are."""
    if getattr(model, "onnx_weights", None) is None:
        return
    from ..onnx import add_norms

    batches = (x.to(device) for x, _ in data.loader("train", 256, shuffle=False, limit=examples))
    convs = add_norms(model, batches)
    if convs:
        print(f"note: {len(convs)} conv(s) of the ONNX graph feed no norm (BatchNorm folded by the exporter?): each "
              "gets a trainable BatchNorm, the identity on the training data, folded back into it in pruned/model.onnx")


def flatten_for(model: nn.Module, data: DataBundle) -> DataBundle:
    """The data with each example flattened when an imported ONNX graph declares a flat input of exactly that many
    features (a scikit-learn model exported by skl2onnx reads digits as 64 numbers); said in a note. Otherwise
    ``data`` as it is."""
    from ..data import TensorPairs

    shape = getattr(model, "metaprune_spec", {}).get("extra", {}).get("input_shape")
    splits = (data.train, data.val, data.test)
    if (not shape or len(shape) != 1 or len(data.input_shape) < 2 or int(torch.Size(data.input_shape).numel()) != shape[0]
            or not all(isinstance(ds, TensorPairs) and ds.transform is None for ds in splits)):
        return data
    print(f"note: the ONNX graph reads {shape[0]} features per example; {data.name} examples of shape "
          f"{tuple(data.input_shape)} are flattened to match")
    flat = [TensorPairs(ds.x.flatten(1), ds.y) for ds in splits]
    return DataBundle(data.name, *flat, data.num_classes, (shape[0],), {**data.info, "flattened": True})
