"""Train one registry network on one dataset and save it as a safe checkpoint (plain arguments)."""
from __future__ import annotations

import time
from pathlib import Path

from ..data import get_data
from ..io import save_model
from ..metrics import macs_and_params
from ..models import build_for_data
from .loop import TrainConfig, evaluate, fit, pick_device, seed_everything

LOADER_KEYS = ("batch_size", "num_workers")


def split_data_cfg(data_cfg: dict) -> tuple[dict, dict]:
    """Split a ``data`` config into ``get_data`` kwargs and loader options."""
    data_cfg = dict(data_cfg)
    loader = {k: data_cfg.pop(k) for k in LOADER_KEYS if k in data_cfg}
    return data_cfg, loader


def train_network(model_name: str, model_args: dict | None = None, data_cfg: dict | None = None,
                  optim: dict | None = None, output_dir=None, seed: int = 0, device: str = "auto",
                  logger=None, data=None, progress: bool = True):
    """Build, train, evaluate (val and test) and optionally save a network. Returns (model, record)."""
    data_kwargs, loader = split_data_cfg(data_cfg or {"name": "digits"})
    data = data or get_data(**data_kwargs)
    seed_everything(seed)
    model = build_for_data(model_name, data.input_shape, data.num_classes, **dict(model_args or {}))
    cfg = TrainConfig.from_dict({**(optim or {}), **loader, "seed": seed, "device": device, "progress": progress})
    t0 = time.perf_counter()
    history = fit(model, data, cfg, logger=logger, desc=model_name)
    train_s = time.perf_counter() - t0
    dev = pick_device(device)
    val = evaluate(model, data.loader("val", 512, shuffle=False), dev)
    test = evaluate(model, data.loader("test", 512, shuffle=False), dev)
    model.cpu()
    macs, params = macs_and_params(model, data.example_inputs())
    record = {"model": model_name, "args": model.metaprune_spec["args"], "data": data.name, "seed": seed,
              "val_acc": val["acc"], "test_acc": test["acc"], "macs": macs, "params": params,
              "epochs": cfg.epochs, "train_seconds": train_s, "history": history}
    if output_dir is not None:
        save_model(model, Path(output_dir), extra={k: v for k, v in record.items() if k != "history"}, marker="train")
    return model, record
