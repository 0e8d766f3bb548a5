"""Metanetwork checkpoints (``metanet.safetensors`` + ``config.json`` + ``zoo_split.json``) and applying one."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from ..io import (MAX_CONFIG_BYTES, CheckpointError, atomic_dir, atomic_write_json, read_json, read_safetensors,
                  save_tensors)
from ..models.budget import check_budget
from ..utils import preserve_mode
from .model import Metanet

WEIGHTS, CONFIG, SPLIT = "metanet.safetensors", "config.json", "zoo_split.json"


def save_metanet(metanet: Metanet, path: str | os.PathLike, extra: dict | None = None,
                 split: dict | None = None) -> Path:
    """Atomically write ``metanet`` to directory ``path``; ``extra`` (training config, scores) goes in the
    config JSON and ``split`` (the zoo split it was trained on) in its own JSON."""
    metanet = getattr(metanet, "module", metanet)  # unwrap DDP
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_tensors(metanet.state_dict(), tmp / WEIGHTS)
        atomic_write_json(tmp / CONFIG, {"metanet": metanet.config, **(extra or {})})
        if split is not None:
            atomic_write_json(tmp / SPLIT, split)
    return path


def load_metanet(path: str | os.PathLike, map_location="cpu") -> Metanet:
    """Rebuild the metanetwork saved in directory ``path`` (never unpickles)."""
    path = Path(path)
    if not (path / WEIGHTS).is_file() or not (path / CONFIG).is_file():
        raise CheckpointError(f"{path}: not a metanetwork checkpoint (needs {WEIGHTS} and {CONFIG})")
    config = read_json(path / CONFIG, MAX_CONFIG_BYTES, "metanetwork config")  # bounded: no FIFO, no device
    try:
        cfg = config["metanet"]
        check_budget(Metanet, cfg, "metanetwork")  # sizes checked on the meta device before allocating
        net = Metanet(**cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: cannot rebuild the metanetwork ({e})") from None
    state = read_safetensors(path / WEIGHTS, map_location)  # bounded, readable, finite
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path / WEIGHTS}: weights do not fit the metanetwork config ({e})") from None
    return net.to(map_location).eval()


class UnseenTypesError(ValueError):
    """The network has neuron or weight types the metanetwork was never trained on."""


@torch.no_grad()
def apply_metanet(metanet: Metanet | str | os.PathLike, model: nn.Module, example_inputs,
                  seen_only: bool = False) -> nn.Module:
    """A copy of ``model`` with the weights the metanetwork writes (model -> NetGraph -> metanet -> model), in the
    train/eval mode ``model`` is in (per submodule); ``model`` and the metanetwork keep theirs.

    ``metanet`` is a :class:`Metanet` or the directory of a saved one. ``seen_only``: raise
    :class:`UnseenTypesError` instead of rewriting a network with node or edge types the metanetwork has no
    encoder for (by default those reuse an encoder of the same width, see ``Metanet(unseen=...)``)."""
    from ..graph import from_graph, to_graph

    if not isinstance(metanet, nn.Module):
        metanet = load_metanet(metanet)
    with preserve_mode(model):  # the copy from_graph makes keeps every submodule's train/eval mode
        graph = to_graph(model, example_inputs)
    unseen = metanet.unseen_types(graph) if seen_only else []
    if unseen:
        raise UnseenTypesError(f"the metanetwork was never trained on {', '.join(unseen)}")
    with preserve_mode(metanet):
        return from_graph(metanet.eval().transform(graph), model)
