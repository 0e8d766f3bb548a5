"""ONNX in and out: import a model from any framework, prune it like a native one, export it back.

``import_onnx(path)`` checks the file (``onnx.checker``), names every op onnx2torch cannot convert before
converting anything, converts with onnx2torch, and then makes the result prunable by torch-pruning:

- ``MatMul`` by a constant 2-D weight (plus a following ``Add`` of a constant bias) becomes ``nn.Linear``,
  because onnx2torch leaves it as an ``OnnxMatMul`` over a buffer that torch-pruning cannot see as a layer;
- float constants with more than one element that feed arithmetic (ViT ``cls_token``, ``pos_embed``)
  become ``nn.Parameter`` so torch-pruning prunes them as unwrapped parameters (last non-singleton dim);
- ``Identity`` copies of initializers and ``Constant`` nodes are folded into initializers first (exporters
  emit them; onnx2torch needs weights as initializers);
- a classifier's extra label output computed by ops onnx2torch cannot convert (skl2onnx's ``ArgMax`` ->
  ``ai.onnx.ml::ArrayFeatureExtractor``) is dropped with a note, keeping the float ``probabilities`` output.

Other constant initializers (a scikit-learn bias of shape [1, H], a Keras BatchNorm folded into [1, C, 1, 1]
``Mul``/``Add`` constants) stay raw parameters that torch-pruning slices with the channels they act on.

Conv, Gemm, BatchNormalization and LayerNormalization already become ``nn.Conv2d`` / ``nn.Linear`` /
``nn.BatchNorm2d`` / ``nn.LayerNorm``; all other ops stay onnx2torch modules, through which torch-pruning
traces channels with its autograd-based tracer (element-wise ops, reshapes with ``-1``, concatenations).

Folded BatchNorm: exporters fold a BatchNorm into the conv before it, and such a network finetunes badly
(the digits ResNet-20: 55% instead of the native 97% after the same pruning and finetuning). ``add_norms`` puts a
trainable BatchNorm after every conv that feeds no norm, the identity on some training data (running statistics
= the conv output's, weight = its standard deviation, bias = its mean), so the function is unchanged and
training normalises by batch statistics again; ``prune.py`` does this before a run that trains. Export folds
each norm back into its conv, so the written graph has the source's ops.

Saving: the imported module is a registry model ``"onnx"`` whose argument is the graph itself, stored
in ``spec.json`` as base64 of the zlib-compressed ONNX proto with its large float initializers zeroed
(the weights live in ``model.safetensors``). So ``save_model`` / ``load_model`` work unchanged and nothing
is ever unpickled; ``load_model`` rebuilds the original graph (with the inserted norms when ``norms`` is set),
shrinks it to the pruned shapes, then loads.

``export_onnx`` writes a model atomically: a native model is traced (opset >= 17, dynamic batch); an imported
one has its (pruned) weights written back into its own ONNX graph, because re-tracing onnx2torch modules
bakes dynamic shapes into constants. ``verify_onnx`` runs a file in onnxruntime and returns the largest
absolute difference to PyTorch.

Limits: torch-pruning cannot change constants inside the graph, so a ``Reshape`` to a constant channel
count (rather than ``-1`` or a computed shape) or a fixed number of attention heads ties those channels:
keep such layers in ``ignored_layers`` (for the ViT test, the ``qkv`` projections). ``Split``/``Slice`` along
channels are traced by torch-pruning only as far as its own ops go.
"""
from __future__ import annotations

import base64
import os
import zlib
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import numpy_helper

from .io import CheckpointError, atomic_write_file, check_file
from .models.registry import register
from .utils import preserve_mode

MIN_OPSET = 17
MAX_ONNX_BYTES = 2 << 30  # protobuf's own limit for one file
_ZEROED_NUMEL = 64  # float initializers larger than this are weights: zeroed in the stored graph


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


class OnnxImportError(ValueError):
    """An ONNX file that cannot be read, checked or converted to PyTorch."""


def supported_ops(opset: int = MIN_OPSET) -> list[str]:
    """ONNX op types (default domain) that onnx2torch converts at ``opset``."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY

    return sorted({d.operation_type for d in _CONVERTER_REGISTRY if d.domain in ("", "ai.onnx") and d.version <= opset})


# --- reading and checking -------------------------------------------------------------------------------------

def _load_proto(path: Path) -> onnx.ModelProto:
    if not os.path.lexists(path):
        raise OnnxImportError(f"{path}: ONNX file not found")
    try:
        check_file(path, MAX_ONNX_BYTES, "ONNX file")  # regular files only: a FIFO or device is never opened
        proto = onnx.load(str(path), load_external_data=False)
        _load_external(proto, path)
    except CheckpointError as e:
        raise OnnxImportError(str(e)) from None
    except Exception as e:  # protobuf DecodeError, OSError, ...
        raise OnnxImportError(f"{path}: not an ONNX model ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if len(proto.graph.node) == 0 or not proto.opset_import:
        raise OnnxImportError(f"{path}: not an ONNX model (no graph nodes or no opset; is it an ONNX file?)")
    proto = _drop_label_outputs(proto, path)
    _check_ops(proto, path)  # before the checker, whose message names no node
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise OnnxImportError(f"{path}: ONNX checker rejected the model: {str(e).splitlines()[0]}") from None
    _check_weights(proto, path)
    return proto


def _load_external(proto: onnx.ModelProto, path: Path) -> None:
    """Read tensors stored outside the file, only from bounded regular files inside the model's folder."""
    from onnx.external_data_helper import _get_all_tensors, load_external_data_for_model, uses_external_data

    base = path.parent.resolve()
    for t in _get_all_tensors(proto):
        if uses_external_data(t):
            where = {e.key: e.value for e in t.external_data}.get("location", "")
            target = (base / where).resolve()
            if os.path.isabs(where) or not target.is_relative_to(base):
                raise CheckpointError(f"{path}: refused: tensor {t.name!r} reads external data from {where!r}, "
                                      "outside the model's folder")
            check_file(target, MAX_ONNX_BYTES, f"external data of tensor {t.name!r}")
    load_external_data_for_model(proto, str(base))


_WEIGHT_OPS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (1, 2), "MatMul": (0, 1),
               "BatchNormalization": (1, 2, 3, 4), "LayerNormalization": (1, 2)}


def _check_weights(proto: onnx.ModelProto, source) -> None:
    """Refuse weights that are NaN/Inf, and integer/bool tensors in a weight's place (quantized models):
    converting them would cast them silently to float."""
    tensors = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            tensors.update({o: a.t for o in node.output[:1] for a in node.attribute if a.name == "value"})
    for name, t in tensors.items():
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise OnnxImportError(f"{source}: refused: weight {name!r} holds NaN or Inf values")
    for node in proto.graph.node:
        for k in _WEIGHT_OPS.get(node.op_type, ()):
            t = tensors.get(node.input[k]) if k < len(node.input) else None
            if t is not None and t.data_type not in _FLOAT_TYPES and int(np.prod(t.dims)) > 1:
                kind = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
                raise OnnxImportError(
                    f"{source}: refused: weight {t.name!r} of {node.op_type} node {node.name!r} is {kind}; integer, "
                    "bool and quantized weights are not imported (they would be cast to float): export the float model")


def _unconvertible(proto: onnx.ModelProto) -> set[str]:
    """Names of the nodes whose op onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain or "": o.version for o in proto.opset_import}
    bad = set()
    for i, node in enumerate(proto.graph.node):
        domain = node.domain or ""
        try:
            get_converter(operation_type=node.op_type, version=opsets.get(domain, 1), domain=domain)
        except NotImplementedError:
            bad.add(node.name or f"#{i}")
    return bad


def _drop_label_outputs(proto: onnx.ModelProto, source) -> onnx.ModelProto:
    """A classifier exported with its predicted label as an extra output (skl2onnx: ``label`` through
    ``ArgMax`` -> ``ai.onnx.ml::ArrayFeatureExtractor``) keeps only its float outputs (``probabilities``) when the
    label branch alone holds ops onnx2torch cannot convert; said in a note. Otherwise the graph is unchanged."""
    bad = _unconvertible(proto)
    if not bad:
        return proto
    g = proto.graph
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}

    def ancestors(names) -> set[int]:
        found, stack = set(), list(names)
        while stack:
            k = producer.get(stack.pop())
            if k is not None and k not in found:
                found.add(k)
                stack.extend(g.node[k].input)
        return found

    keep = [o for o in g.output if not any((g.node[k].name or f"#{k}") in bad for k in ancestors([o.name]))]
    if not keep or len(keep) == len(g.output) or any(o.type.tensor_type.elem_type not in _FLOAT_TYPES for o in keep):
        return proto
    needed = ancestors([o.name for o in keep])
    out = _copy(proto)
    nodes = [n for k, n in enumerate(out.graph.node) if k in needed]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    dropped = [o.name for o in g.output if o not in keep]
    kept_names = [o.name for o in keep]
    outputs = [o for o in out.graph.output if o.name in kept_names]
    del out.graph.output[:]
    out.graph.output.extend(outputs)
    used = {i for n in nodes for i in n.input}
    inits = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    domains = {n.domain or "" for n in nodes}
    del out.opset_import[:]  # the ML domain's opset goes with its ops
    out.opset_import.extend(o for o in proto.opset_import if (o.domain or "") in domains | {"", "ai.onnx"})
    print(f"note: {source}: output(s) {', '.join(dropped)} dropped (they need ops onnx2torch cannot convert: "
          f"{', '.join(sorted(bad))}); importing only {', '.join(kept_names)} (also in the ONNX file written back)")
    return out


def _check_ops(proto: onnx.ModelProto, source) -> None:
    """Raise one error naming every node whose op onnx2torch has no converter for."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain or "": o.version for o in proto.opset_import}
    bad = []
    for i, node in enumerate(proto.graph.node):
        domain = node.domain or ""
        try:
            get_converter(operation_type=node.op_type, version=opsets.get(domain, 1), domain=domain)
        except NotImplementedError:
            op = f"{domain}::{node.op_type}" if domain not in ("", "ai.onnx") else node.op_type
            bad.append(f"op {op!r} (node {node.name or f'#{i}'!r})")
    if bad:
        raise OnnxImportError(
            f"{source}: cannot import: unsupported ONNX {'op' if len(bad) == 1 else 'ops'} "
            f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''}; see metaprune.onnx.supported_ops() "
            "for the ops onnx2torch converts"
        )


def _prepare(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Normalise a graph for conversion and write-back (deterministic, so a rebuild matches the import).

    Nodes get unique names (they name the converted modules); ``Constant`` nodes and ``Identity`` copies of
    initializers become initializers (onnx2torch needs weights as initializers); a weight initializer read
    by several nodes is copied per reader, so each pruned layer writes back its own tensor.
    """
    proto = _copy(proto)
    g = proto.graph
    seen: dict[str, int] = {}
    for i, node in enumerate(g.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        seen[name] = 0
        node.name = name
    by_name = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    keep = []
    for node in g.node:
        new = None
        if node.output and node.output[0] in outputs:
            pass
        elif node.op_type == "Identity" and node.input[0] in by_name:
            new = onnx.TensorProto()
            new.CopyFrom(by_name[node.input[0]])
        elif node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            new = onnx.TensorProto()
            new.CopyFrom(node.attribute[0].t)
        if new is None:
            keep.append(node)
            continue
        new.name = node.output[0]
        g.initializer.append(new)
        by_name[new.name] = g.initializer[-1]
    del g.node[:]
    g.node.extend(keep)
    readers: dict[str, int] = {}
    for node in g.node:
        for k, name in enumerate(node.input):
            t = by_name.get(name)
            if t is None or t.data_type not in _FLOAT_TYPES or int(np.prod(t.dims)) <= 1:
                continue
            readers[name] = readers.get(name, 0) + 1
            if readers[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(t)
                copy.name = f"{name}__{node.name}_{k}"
                g.initializer.append(copy)
                node.input[k] = copy.name
    return proto


def _copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    return out


# --- the stored graph -----------------------------------------------------------------------------------------

def _pack(proto: onnx.ModelProto) -> str:
    """Graph without its weights (large float initializers zeroed), zlib-compressed, base64 text."""
    proto = _copy(proto)
    for i, t in enumerate(proto.graph.initializer):
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind == "f" and arr.size > _ZEROED_NUMEL:
            proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.zeros_like(arr), t.name))
    return base64.b64encode(zlib.compress(proto.SerializeToString(), 9)).decode("ascii")


def _unpack(graph: str) -> onnx.ModelProto:
    try:
        inflate = zlib.decompressobj()
        data = inflate.decompress(base64.b64decode(graph), MAX_ONNX_BYTES)
        if inflate.unconsumed_tail:  # a compression bomb: stop at the bound instead of exhausting memory
            raise OnnxImportError(f"stored ONNX graph is over the {MAX_ONNX_BYTES:,}-byte limit")
        return onnx.load_from_string(data)
    except OnnxImportError:
        raise
    except Exception as e:
        raise OnnxImportError(f"stored ONNX graph is corrupt ({type(e).__name__})") from None


def _input_shape(proto: onnx.ModelProto) -> list[int] | None:
    """Shape of the first graph input without its batch axis (None where a dim is symbolic)."""
    inits = {t.name for t in proto.graph.initializer}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
        rest = dims[1:]
        return rest if rest and all(d is not None for d in rest) else None
    return None


@register("onnx")
def onnx_graph(graph: str, norms: bool = False) -> nn.Module:
    """Registry constructor: a PyTorch module from a packed ONNX graph (see module docstring); ``norms``: with the
    BatchNorm layers :func:`add_norms` inserted (their values come from the checkpoint's weights)."""
    model = _convert(_unpack(graph), "stored ONNX graph")
    if norms:
        _insert_norms(model)
    return model


def _convert(proto: onnx.ModelProto, source) -> nn.Module:
    from onnx2torch import convert

    _check_ops(proto, source)
    proto = _prepare(proto)
    try:
        gm = convert(proto, attach_onnx_mapping=True)
    except Exception as e:  # a converter refusing an attribute value, shape inference failing, ...
        raise OnnxImportError(f"{source}: onnx2torch could not convert the model: {type(e).__name__}: {e}") from None
    attr_init = {}  # get_attr target -> ONNX initializer name
    for node in gm.graph.nodes:
        mapping = getattr(gm.get_submodule(node.target), "onnx_mapping", None) if node.op == "call_module" else None
        for arg, value in zip(node.args, mapping.inputs if mapping is not None else ()):
            if getattr(arg, "op", None) == "get_attr":
                attr_init[arg.target] = value
    weights = _layer_weights(gm, proto)
    weights.update(_nativize(gm, attr_init))
    # where each tensor of the state dict lives in the ONNX graph: (initializer name, stored transposed)
    gm.onnx_weights = weights
    gm.onnx_norms = {}  # inserted norm -> the conv it follows (add_norms); folded into the conv on export
    return gm.eval()


_LAYER_INPUTS = {  # ONNX op -> (module tensor, node input index) for ops onnx2torch turns into nn layers
    "Conv": (("weight", 1), ("bias", 2)),
    "BatchNormalization": (("weight", 1), ("bias", 2), ("running_mean", 3), ("running_var", 4)),
    "LayerNormalization": (("weight", 1), ("bias", 2)),
    "Gemm": (("weight", 1), ("bias", 2)),
}


def _layer_weights(gm, proto: onnx.ModelProto) -> dict[str, tuple[str, bool]]:
    from onnx2torch.onnx_graph import OnnxGraph

    # onnx2torch names each converted module after its node (its own unique naming, in node order)
    nodes = dict(zip(OnnxGraph(proto.graph).nodes, proto.graph.node))
    out = {}
    for name, mod in gm.named_children():
        node = nodes.get(name)
        if node is None or node.op_type not in _LAYER_INPUTS or not isinstance(
                mod, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm)):
            continue
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        for tensor, k in _LAYER_INPUTS[node.op_type]:
            if k < len(node.input) and node.input[k] and getattr(mod, tensor, None) is not None:
                transpose = node.op_type == "Gemm" and tensor == "weight" and not trans_b
                out[f"{name}.{tensor}"] = (node.input[k], transpose)
    return out


# --- making the converted module prunable ---------------------------------------------------------------------

def _const(gm, node):
    """The tensor behind a ``get_attr`` node, else None."""
    if getattr(node, "op", None) != "get_attr":
        return None
    obj = gm
    for part in node.target.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, torch.Tensor) else None


def _drop_attr(gm, target: str) -> None:
    owner, _, name = target.rpartition(".")
    mod = gm.get_submodule(owner) if owner else gm
    if hasattr(mod, name):
        delattr(mod, name)


def _nativize(gm: torch.fx.GraphModule, attr_init: dict[str, str]) -> dict[str, tuple[str, bool]]:
    """MatMul(x, W)[+b] -> nn.Linear; float constants feeding arithmetic -> nn.Parameter (in place).

    Returns where the new layers' tensors and the remaining float constants live in the ONNX graph.
    """
    from onnx2torch.node_converters.concat import OnnxConcat
    from onnx2torch.node_converters.expand import OnnxExpand
    from onnx2torch.node_converters.binary_math_operations import OnnxBinaryMathOperation
    from onnx2torch.node_converters.matmul import OnnxMatMul

    graph = gm.graph
    weights: dict[str, tuple[str, bool]] = {}
    erased = set()
    for node in list(graph.nodes):
        if node in erased or node.op != "call_module" or not isinstance(gm.get_submodule(node.target), OnnxMatMul):
            continue
        x, w_node = node.args
        w = _const(gm, w_node)
        if w is None or w.dim() != 2 or not w.is_floating_point():
            continue
        lin = nn.Linear(w.shape[0], w.shape[1], bias=False)
        lin.weight = nn.Parameter(w.detach().t().contiguous())
        weights[f"{node.target}.weight"] = (attr_init[w_node.target], True)
        out_node = node
        users = list(node.users)
        if len(users) == 1 and users[0].op == "call_module":
            add = users[0]
            mod = gm.get_submodule(add.target)
            if isinstance(mod, OnnxBinaryMathOperation) and getattr(mod, "math_op_function", None) is torch.add:
                other = add.args[0] if add.args[1] is node else add.args[1]
                b = _const(gm, other)
                if b is not None and b.dim() == 1 and b.shape[0] == w.shape[1] and len(add.args) == 2:
                    lin.bias = nn.Parameter(b.detach().clone())
                    weights[f"{node.target}.bias"] = (attr_init[other.target], False)
                    out_node = add
        gm.add_submodule(node.target, lin)
        with graph.inserting_before(node):
            new = graph.call_module(node.target, (x,))
        out_node.replace_all_uses_with(new)
        if out_node is not node:
            bias_node = out_node.args[0] if out_node.args[1] is node else out_node.args[1]
            graph.erase_node(out_node)
            erased.add(out_node)
            gm.delete_submodule(out_node.target)
            if not bias_node.users:
                graph.erase_node(bias_node)
                _drop_attr(gm, bias_node.target)
        graph.erase_node(node)
        if not w_node.users:
            graph.erase_node(w_node)
            _drop_attr(gm, w_node.target)
    # float constants: all are written back on export; those that feed arithmetic (cls_token, pos_embed,
    # per-channel scales) become parameters so torch-pruning prunes them as unwrapped parameters
    arithmetic = (OnnxBinaryMathOperation, OnnxConcat, OnnxExpand)
    for node in list(graph.nodes):
        t = _const(gm, node)
        if t is None or not t.is_floating_point() or t.numel() <= 1 or node.target not in attr_init:
            continue
        weights[node.target] = (attr_init[node.target], False)
        if isinstance(t, nn.Parameter) or not all(
                u.op == "call_module" and isinstance(gm.get_submodule(u.target), arithmetic) for u in node.users):
            continue
        owner, _, name = node.target.rpartition(".")
        mod = gm.get_submodule(owner) if owner else gm
        delattr(mod, name)
        mod.register_parameter(name, nn.Parameter(t.detach().clone()))
    graph.lint()
    gm.recompile()
    return weights


# --- trainable norms where the exporter folded BatchNorm away ------------------------------------------------

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_BATCHNORM = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}


def _insert_norms(gm: torch.fx.GraphModule) -> dict[str, str]:
    """Put a BatchNorm that computes the identity (eval mode) after every convolution whose output feeds no
    norm layer; record them in ``gm.onnx_norms`` (norm -> conv) and return the new ones. Deterministic, so a
    rebuilt graph gets the same modules as the imported one."""
    graph, added = gm.graph, {}
    for node in list(graph.nodes):
        conv = gm.get_submodule(node.target) if node.op == "call_module" else None
        if type(conv) not in _BATCHNORM or not node.users or any(
                u.op == "call_module" and isinstance(gm.get_submodule(u.target), _NORMS) for u in node.users):
            continue
        name = f"{node.target}/norm"
        norm = _BATCHNORM[type(conv)](conv.out_channels).to(conv.weight.device, conv.weight.dtype).train(conv.training)
        with torch.no_grad():
            norm.weight.fill_((1 + norm.eps) ** 0.5)  # (x - 0) / sqrt(1 + eps) * sqrt(1 + eps) + 0 = x
        gm.add_submodule(name, norm)
        with graph.inserting_after(node):
            new = graph.call_module(name, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda u, new=new: u is not new)
        added[name] = node.target
    graph.lint()
    gm.recompile()
    gm.onnx_norms = {**getattr(gm, "onnx_norms", {}), **added}
    return added


def add_norms(model: nn.Module, batches) -> list[str]:
    """Give an imported network a trainable BatchNorm after every convolution that feeds no norm (an exporter
    folds BatchNorm into the conv's weights, and such a network finetunes badly); returns the convs given one.

    Each norm is the identity on the data: its running mean and variance are the conv output's statistics on
    ``batches`` (an iterable of input tensors, e.g. a few training batches), its weight the standard deviation
    and its bias the mean, so the model's function is unchanged (eval mode, up to float rounding) while training
    normalises by batch statistics as the original network did. ``export_onnx`` folds the norms back into the
    convs (the written graph is the source graph with new weights) and ``load_model`` rebuilds them.
    """
    if getattr(model, "metaprune_spec", {}).get("name") != "onnx" or getattr(model, "onnx_weights", None) is None:
        raise ValueError("add_norms takes a model from import_onnx")
    added = _insert_norms(model)
    if not added:
        return []
    model.metaprune_spec["args"]["norms"] = True  # saved and rebuilt with them from here on
    sums: dict[str, list] = {}

    def record(name):
        def hook(_, args):
            x = args[0].detach().double().transpose(0, 1).flatten(1)  # channels x (examples * positions)
            n, s1, s2 = sums.get(name, (0, 0.0, 0.0))
            sums[name] = [n + x.shape[1], s1 + x.sum(1), s2 + (x * x).sum(1)]
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(record(n)) for n in added]
    try:
        with preserve_mode(model), torch.no_grad():
            model.eval()  # the new norms are the identity in eval mode: each sees its conv's own output
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    if len(sums) != len(added):  # the norms stay, as the identity they were inserted as
        raise ValueError("add_norms needs at least one batch of inputs to set its norms from")
    with torch.no_grad():
        for name in added:
            norm, (n, s1, s2) = model.get_submodule(name), sums[name]
            mean = s1 / n
            var = (s2 / n - mean * mean).clamp_min(0)
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_((var + norm.eps).sqrt())
            norm.bias.copy_(mean)
    return list(added.values())


def _folded_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with every inserted norm folded into its conv (eval-mode statistics) and removed."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name, conv in getattr(model, "onnx_norms", {}).items():
        norm = model.get_submodule(name)
        scale = norm.weight.detach().cpu().double() / (norm.running_var.cpu().double() + norm.eps).sqrt()
        w = state[f"{conv}.weight"]
        b = state.get(f"{conv}.bias", torch.zeros(w.shape[0], dtype=w.dtype))
        state[f"{conv}.weight"] = (w.double() * scale.view(-1, *[1] * (w.dim() - 1))).to(w.dtype)
        shift = (b.double() - norm.running_mean.cpu().double()) * scale + norm.bias.detach().cpu().double()
        state[f"{conv}.bias"] = shift.to(w.dtype)
        for k in [k for k in state if k.startswith(f"{name}.")]:
            del state[k]
    return state


# --- public API -----------------------------------------------------------------------------------------------

def import_onnx(path: str | os.PathLike) -> nn.Module:
    """Read the ONNX model at ``path`` as a prunable PyTorch module (eval mode) that ``save_model`` can save.

    Raises ``OnnxImportError`` for a missing or non-ONNX file, a model the ONNX checker rejects, or ops
    onnx2torch cannot convert (all of them named, with their node names, before any conversion).
    """
    path = Path(path)
    proto = _load_proto(path)
    model = _convert(proto, path)
    # the same record ``build("onnx", graph=...)`` leaves, so load_model rebuilds it through the registry
    model.metaprune_spec = {"name": "onnx", "args": {"graph": _pack(proto)}}
    shape = _input_shape(proto)
    model.metaprune_spec["extra"] = {"source": str(path), **({"input_shape": shape} if shape else {})}
    return model.eval()


def example_inputs_for(model: nn.Module, batch_size: int = 1) -> torch.Tensor:
    """Random inputs of the shape an imported model's ONNX graph declares (for tracing and MACs)."""
    shape = getattr(model, "metaprune_spec", {}).get("extra", {}).get("input_shape")
    if not shape:
        raise OnnxImportError("the ONNX graph declares no fixed input shape; pass example inputs explicitly")
    return torch.randn(batch_size, *shape)


def export_onnx(model: nn.Module, example_inputs, path: str | os.PathLike, opset: int = MIN_OPSET) -> Path:
    """Write ``model`` as ONNX to ``path`` atomically; returns the path.

    A native model is traced by ``torch.onnx.export`` (opset >= 17, dynamic batch axis). A model from
    ``import_onnx`` (pruned or not) is written back into its own ONNX graph: every weight initializer is
    replaced by the (pruned) tensor and stale shape annotations are dropped, so the source framework's
    graph, opset and dynamic axes are kept and nothing is re-traced through onnx2torch's modules.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is too old: metaprune exports opset >= {MIN_OPSET}")
    path = Path(path)
    if getattr(model, "onnx_weights", None) is not None and getattr(model, "metaprune_spec", {}).get("name") == "onnx":
        proto = _write_back(model)
        _atomic(path, lambda tmp: onnx.save(proto, tmp))
        return path
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    names = [f"input{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]

    def write(tmp):
        with torch.no_grad():
            torch.onnx.export(model, tuple(inputs), tmp, opset_version=opset, dynamo=False, input_names=names,
                              output_names=["output"],
                              dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}})

    with preserve_mode(model):
        model.eval()
        _atomic(path, write)
    return path


def _atomic(path: Path, write) -> None:
    """``write(tmp)`` a file next to ``path``, check it is valid ONNX, then rename it into place."""
    def write_checked(tmp):
        write(tmp)
        onnx.checker.check_model(tmp)

    atomic_write_file(path, write_checked)


def _write_back(model: nn.Module) -> onnx.ModelProto:
    proto = _prepare(_unpack(model.metaprune_spec["args"]["graph"]))
    where = dict(model.onnx_weights)
    state = _folded_state(model)
    for conv in getattr(model, "onnx_norms", {}).values():  # a conv without bias gets its norm's shift as one
        if f"{conv}.bias" not in where:
            init = where[f"{conv}.weight"][0]
            node = next(n for n in proto.graph.node if n.op_type == "Conv" and n.input[1] == init)
            kind = next(t.data_type for t in proto.graph.initializer if t.name == init)
            bias = numpy_helper.from_array(np.zeros(1, onnx.helper.tensor_dtype_to_np_dtype(kind)), f"{init}__bias")
            proto.graph.initializer.append(bias)
            node.input.extend([""] * (3 - len(node.input)))
            node.input[2] = bias.name
            where[f"{conv}.bias"] = (bias.name, False)
    unmapped = [k for k, _ in model.named_parameters() if k in state and k not in where]
    if unmapped:
        raise ValueError(f"cannot write the model back to ONNX: parameters {unmapped[:5]} have no ONNX initializer")
    index = {t.name: i for i, t in enumerate(proto.graph.initializer)}
    written = set()
    for key, (init, transpose) in where.items():
        old = proto.graph.initializer[index[init]]
        t = state[key]
        arr = (t.t() if transpose else t).contiguous().numpy().astype(onnx.helper.tensor_dtype_to_np_dtype(old.data_type))
        proto.graph.initializer[index[init]].CopyFrom(numpy_helper.from_array(arr, init))
        written.add(init)
    layer_of = {init: key.rpartition(".")[0] for key, (init, _) in where.items() if key.endswith(".weight")}
    for node in proto.graph.node:  # Gemm layers hold alpha/beta already multiplied into their tensors
        if node.op_type == "Gemm" and len(node.input) > 1 and node.input[1] in written:
            for a in node.attribute:
                if a.name in ("alpha", "beta"):
                    a.f = 1.0
        # a pruned depthwise conv has fewer groups: the node's ``group`` follows the layer
        if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1 and node.input[1] in layer_of:
            groups = getattr(model.get_submodule(layer_of[node.input[1]]), "groups", None)
            attr = next((a for a in node.attribute if a.name == "group"), None)
            if isinstance(groups, int) and (attr.i if attr is not None else 1) != groups:
                if attr is None:
                    node.attribute.append(onnx.helper.make_attribute("group", groups))
                else:
                    attr.i = groups
    del proto.graph.value_info[:]  # channel counts changed; runtimes re-infer shapes
    for out in proto.graph.output:
        for d in list(out.type.tensor_type.shape.dim)[1:]:
            if d.HasField("dim_value"):
                d.Clear()
                d.dim_param = f"{out.name}_dim"
    return proto


def verify_onnx(model: nn.Module, path: str | os.PathLike, example_inputs) -> float:
    """Largest absolute difference between onnxruntime on ``path`` and ``model`` (eval) on the inputs."""
    import onnxruntime as ort

    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {i.name: t.detach().cpu().numpy() for i, t in zip(sess.get_inputs(), inputs)}
    got = sess.run(None, feed)[0]
    with preserve_mode(model), torch.no_grad():
        want = model.eval()(*inputs)
    want = want[0] if isinstance(want, (tuple, list)) else want
    return float(np.abs(got - want.detach().cpu().numpy()).max())
