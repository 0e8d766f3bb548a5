"""A whole meta-training run, as ``train_meta.py`` calls it: check the composed config before any work,
join the ``torchrun`` process group, build (or reuse) the zoo, then meta-train (``metaprune.metatrain.loop``)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..data import get_data
from ..graph.vocab import F_NODE, SLOT
from ..metanet import Metanet
from ..train.loop import pick_device
from ..train.network import split_data_cfg
from ..zoo import build_zoo, load_zoo, plan_members, split_members
from .loop import MetaConfig, check_families, dist_info, meta_train

METANET_KEYS = {"hidden", "layers", "aggr", "scale", "frozen_features", "unseen", "mode"}


def check_run_config(c: dict) -> MetaConfig:
    """Fail before any work on a bad value, naming the key."""
    unknown = sorted(set(c["metanet"]) - METANET_KEYS)
    if unknown:
        raise ValueError(f"unknown metanet option(s) {unknown}; known: {sorted(METANET_KEYS)}")
    Metanet(["conv"], {"linear": 1}, F_NODE, gain_slot=SLOT["running_var"],
            **{k: v for k, v in c["metanet"].items() if k != "frozen_features"})
    members = plan_members(c["zoo"], c["optim"])
    split = split_members(members, c["zoo"].get("split") or {})
    if not split["train"] and not c.get("zoo_only"):
        raise ValueError("zoo split leaves no meta-train networks: add members or lower zoo.split fractions "
                         "(a zoo of held-out networks only is built with zoo_only=true, to evaluate on)")
    cfg = MetaConfig.from_dict(c["meta_optim"])
    check_families(cfg.families, [m["family"] for m in members])
    return cfg


def _init_distributed(device: str):
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: join the process group (gloo on CPU, nccl on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return pick_device(device)
    dev = pick_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def run_meta(c: dict, logger=None) -> dict:
    """Build (or reuse) the zoo, then meta-train; ``c`` is the composed ``train_meta`` config as a dict."""
    cfg = check_run_config(c)
    device = _init_distributed(c["device"])
    rank, world = dist_info()
    data_kwargs, _ = split_data_cfg(c["data"])
    data = get_data(**data_kwargs)
    zoo_root = Path(c["zoo"].get("root", "checkpoints/zoo")) / c["zoo"].get("name", c["data"]["name"])
    if rank == 0:
        zoo = build_zoo(c["zoo"], c["data"], c["optim"], root=zoo_root, device=str(device), data=data,
                        progress=c.get("progress", True))
    if world > 1:
        dist.barrier()
    if rank != 0:
        zoo = load_zoo(zoo_root)
    if c.get("zoo_only"):
        return {"zoo": str(zoo_root), "split": zoo.split if zoo is not None else None}
    if zoo is None:
        raise ValueError(f"zoo {zoo_root} is incomplete: zoo.num_shards={c['zoo']['num_shards']} shards are still "
                         "building; run train_meta.py zoo_only=true without zoo.shard once they finish")
    out_dir = Path(c["out_root"]) / c["name"]
    try:
        return meta_train(zoo, data, c["metanet"], cfg, out_dir, seed=c["seed"], device=device, resume=c["resume"],
                          logger=logger, progress=c.get("progress", True), run_config=c,
                          stop_after=c.get("stop_after"))
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
