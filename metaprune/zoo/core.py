"""Zoo construction and loading (see package docstring)."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch.nn as nn
from tqdm.auto import tqdm

from ..data import get_data
from ..io import MAX_JSON_BYTES, CheckpointError, atomic_write_json, load_model, read_json, read_spec, save_model
from ..train.network import split_data_cfg, train_network

SPLITS = ("train", "val", "heldout")
INDEX = "index.json"
_SHORT = {"depth": "d", "width": "w", "dim": "c", "heads": "h", "patch_size": "p", "mlp_ratio": "r", "width_mult": "m",
          "blocks": "b", "growth": "g", "stem_stride": "st"}


def _short_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "x".join(_short_value(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def member_name(family: str, args: dict, seed: int) -> str:
    """A readable, unique directory name: ``resnet-d20-w8-s0``, ``densenet-b2x2x2-g8-s0``."""
    parts = [f"{_SHORT.get(k, k)}{_short_value(v)}" for k, v in sorted(args.items())]
    return "-".join([family.replace(":", "_"), *parts, f"s{seed}"])


def plan_members(zoo_cfg: dict, optim: dict) -> list[dict]:
    """Every member the config asks for: ``{name, model, args, seed, optim}`` (family optim overrides merged)."""
    families = zoo_cfg.get("families") or {}
    if not families:
        raise ValueError("zoo.families is empty: list at least one family with its archs and seeds")
    out = []
    for family, fcfg in families.items():
        for key in ("archs", "seeds"):
            if not fcfg.get(key):
                raise ValueError(f"zoo.families.{family}.{key} is missing or empty")
        model = fcfg.get("model", family)
        member_optim = {**(optim or {}), **(fcfg.get("optim") or {})}
        for args in fcfg["archs"]:
            for seed in fcfg["seeds"]:
                out.append({"name": member_name(family, dict(args), int(seed)), "family": family, "model": model,
                            "args": dict(args), "seed": int(seed), "optim": member_optim})
    names = [m["name"] for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"zoo lists the same member twice: {dup}")
    return out


def split_members(members: list[dict], split_cfg: dict) -> dict[str, list[str]]:
    """Split by network: whole ``heldout_families`` go to heldout; members trained with one of ``train_seeds`` go to
    train; each other family's remaining members are shuffled (seeded) and cut into ``heldout`` and ``val`` fractions
    (at least one each when there are 3+), the rest train. So a zoo grown with new seeds listed in ``train_seeds``
    keeps the meta-val and held-out networks of the zoo it grew from, and only its meta-train split grows.
    Every family held out gives a zoo of held-out networks only, to evaluate on (``train_meta.py zoo_only=true``)."""
    held_fams = set(split_cfg.get("heldout_families") or [])
    fams = {m["family"] for m in members}
    unknown = held_fams - fams
    if unknown:
        raise ValueError(f"zoo.split.heldout_families names families not in the zoo: {sorted(unknown)}")
    train_seeds = split_cfg.get("train_seeds") or []
    if not isinstance(train_seeds, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in train_seeds):
        raise ValueError(f"zoo.split.train_seeds={train_seeds!r} must be a list of member seeds (integers)")
    grown = {m["name"] for m in members if m["seed"] in train_seeds and m["family"] not in held_fams}
    val_f, held_f = float(split_cfg.get("val", 0.15)), float(split_cfg.get("heldout", 0.25))
    if not (0 <= val_f < 1 and 0 <= held_f < 1 and val_f + held_f < 1):
        raise ValueError(f"zoo.split.val={val_f} and zoo.split.heldout={held_f} must be fractions summing below 1")
    rng = random.Random(int(split_cfg.get("seed", 0)))
    split = {s: [] for s in SPLITS}
    for fam in sorted(fams):
        names = sorted(m["name"] for m in members if m["family"] == fam)
        if fam in held_fams:
            split["heldout"] += names
            continue
        split["train"] += [n for n in names if n in grown]
        names = [n for n in names if n not in grown]
        rng.shuffle(names)
        n = len(names)
        n_held = max(1, round(held_f * n)) if n >= 3 and held_f > 0 else 0
        n_val = max(1, round(val_f * n)) if n >= 3 and val_f > 0 else 0
        split["heldout"] += names[:n_held]
        split["val"] += names[n_held:n_held + n_val]
        split["train"] += names[n_held + n_val:]
    return {k: sorted(v) for k, v in split.items()}  # no train networks: an evaluation zoo (meta-training refuses it)


def index_entry(member: dict, split: dict[str, list[str]], record: dict) -> dict:
    """A member's line in ``index.json``: what it is, its split, and the numbers its training recorded."""
    return {"family": member["family"], "model": member["model"], "args": member["args"], "seed": member["seed"],
            "path": member["name"], "split": next(s for s in SPLITS if member["name"] in split[s]),
            **{k: record[k] for k in ("val_acc", "test_acc", "macs", "params", "train_seconds") if k in record}}


def _recipe(member: dict, data_cfg: dict) -> dict:
    """What must match for a member on disk to be reused (JSON-normalised)."""
    return json.loads(json.dumps({"model": member["model"], "args": member["args"], "seed": member["seed"],
                                  "optim": member["optim"], "data": data_cfg}, sort_keys=True))


class Zoo:
    """A built zoo: ``root`` directory, ``index`` (members, split, config), ``load(name)`` a member's network."""

    def __init__(self, root: str | Path, index: dict):
        self.root, self.index = Path(root), index

    @property
    def split(self) -> dict[str, list[str]]:
        return self.index["split"]

    @property
    def members(self) -> dict[str, dict]:
        return self.index["members"]

    def names(self, split: str | None = None, families=None) -> list[str]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"zoo split {split!r} is unknown: must be one of {SPLITS}")
        names = self.split[split] if split else sorted(self.members)
        return [n for n in names if families is None or self.members[n]["family"] in families]

    def load(self, name: str) -> nn.Module:
        if name not in self.members:
            raise KeyError(f"zoo {self.root} has no member {name!r}")
        return load_model(_member_dir(self.root, name, self.members[name]))

    def __len__(self) -> int:
        return len(self.members)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.split.items())
        return f"Zoo({self.root}, {len(self)} members: {sizes})"


def _member_dir(root: Path, name: str, member: dict) -> Path:
    """A member's directory, refused (naming the index) when its path would leave the zoo root."""
    rel = member.get("path", name)
    base = root.resolve()
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or \
            not (base / rel).resolve().is_relative_to(base) or (base / rel).resolve() == base:
        raise CheckpointError(f"{root / INDEX}: members.{name}.path={rel!r} is refused: a member's path must be a "
                              "folder inside the zoo root")
    return root / rel


def load_zoo(root: str | Path) -> Zoo:
    root = Path(root)
    if not os.path.lexists(root / INDEX):
        raise CheckpointError(f"{root}: no zoo {INDEX}; build it with build_zoo / train_meta.py")
    index = read_json(root / INDEX, MAX_JSON_BYTES, "zoo index")
    where = root / INDEX
    if not isinstance(index, dict) or not isinstance(index.get("members"), dict) or \
            not isinstance(index.get("split"), dict):
        raise CheckpointError(f"{where}: not a zoo index (needs 'members' and 'split' objects)")
    for name, member in index["members"].items():
        if not isinstance(member, dict):
            raise CheckpointError(f"{where}: members.{name} must be an object, got {type(member).__name__}")
        _member_dir(root, name, member)
    for split, names in index["split"].items():
        if split not in SPLITS or not isinstance(names, list):
            raise CheckpointError(f"{where}: split.{split} is not one of {SPLITS} with a list of member names")
        unknown = [n for n in names if not isinstance(n, str) or n not in index["members"]]
        if unknown:
            raise CheckpointError(f"{where}: split.{split} names members not in the index: {unknown[:5]}")
    return Zoo(root, index)


def _reusable(path: Path, recipe: dict) -> dict | None:
    """The stored record of a finished member whose recipe matches, else None."""
    try:
        extra = read_spec(path).get("extra", {})
    except CheckpointError:
        return None
    if extra.get("recipe") != recipe or not (path / "model.safetensors").is_file():
        return None
    return extra


def _reuse_dirs(zoo_cfg: dict, root: Path) -> list[Path]:
    """The other zoos (``zoo.reuse_from``) whose finished members are copied instead of trained again."""
    dirs = zoo_cfg.get("reuse_from") or []
    if isinstance(dirs, (str, Path)) or not all(isinstance(d, (str, Path)) for d in dirs):
        raise ValueError(f"zoo.reuse_from={dirs!r} must be a list of zoo directories")
    out = [Path(d) for d in dirs]
    for d in out:
        if not d.is_dir():
            raise ValueError(f"zoo.reuse_from: {d} is not a directory (a built zoo whose members to reuse)")
        if d.resolve() == root.resolve():
            raise ValueError(f"zoo.reuse_from: {d} is this zoo's own directory")
    return out


def _copy_member(sources: list[Path], root: Path, name: str, recipe: dict) -> dict | None:
    """Copy ``name`` from the first zoo of ``sources`` holding it with the same recipe (whole, via a temporary
    folder renamed into place); its stored record, or None when no source has it."""
    for src in sources:
        record = _reusable(src / name, recipe)
        if record is None:
            continue
        tmp, dst = root / f".{name}.copy", root / name
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src / name, tmp)
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
        return record
    return None


def build_zoo(zoo_cfg: dict, data_cfg: dict, optim: dict | None = None, root: str | Path | None = None,
              device: str = "cpu", progress: bool = True, data=None, log=print) -> Zoo | None:
    """Train (or reuse) every member of ``zoo_cfg`` on ``data_cfg``; returns the indexed :class:`Zoo`.

    ``zoo_cfg``: ``{name, root, families: {family: {model?, archs: [args...], seeds: [...], optim?}}, split,
    data?, shard?, num_shards?}``; ``data`` overrides ``data_cfg`` keys for the members (a ``train_subset``, say). With ``num_shards`` N > 1 this call trains only members ``i`` with ``i % N == shard``
    (in plan order), so N processes build one zoo in parallel without writing the same member; a sharded call
    writes ``index.json`` only once every member is on disk, and returns None before that. An unsharded call
    afterwards reuses everything and writes the index. ``reuse_from``: other zoo directories; a member one of them
    holds with the same recipe is copied, not trained (growing a zoo with new seeds trains only those).
    """
    root = Path(root or Path(zoo_cfg.get("root", "checkpoints/zoo")) / zoo_cfg.get("name", data_cfg["name"]))
    if zoo_cfg.get("data"):  # the zoo's own data settings (e.g. a train_subset) are part of its recipe
        if any(data_cfg.get(k) != v for k, v in zoo_cfg["data"].items()):
            data = None
        data_cfg = {**data_cfg, **zoo_cfg["data"]}
    shard, num_shards = int(zoo_cfg.get("shard") or 0), int(zoo_cfg.get("num_shards") or 1)
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"zoo.shard={shard} must lie in [0, zoo.num_shards={num_shards})")
    members = plan_members(zoo_cfg, optim or {})
    split = split_members(members, zoo_cfg.get("split") or {})
    sources = _reuse_dirs(zoo_cfg, root)
    index = {"data": data_cfg, "config": {k: v for k, v in zoo_cfg.items() if k not in ("shard", "num_shards")},
             "split": split, "members": {}}
    bar = tqdm(members, desc=f"zoo {root.name}" + (f" shard {shard}/{num_shards}" if num_shards > 1 else ""),
               disable=not progress, dynamic_ncols=True)
    trained, missing = 0, []
    for i, m in enumerate(bar):
        path, recipe = root / m["name"], _recipe(m, data_cfg)
        record = _reusable(path, recipe)
        if record is None and sources and i % num_shards == shard:
            record = _copy_member(sources, root, m["name"], recipe)
        if record is None and i % num_shards != shard:
            missing.append(m["name"])  # another shard's member, not finished yet
            continue
        if record is None:
            if data is None:
                data = get_data(**split_data_cfg(data_cfg)[0])
            bar.set_postfix_str(f"training {m['name']}")
            model, rec = train_network(m["model"], m["args"], data_cfg, m["optim"], output_dir=None, seed=m["seed"],
                                       device=device, data=data, progress=False)
            record = {**{k: v for k, v in rec.items() if k != "history"}, "family": m["family"], "recipe": recipe}
            save_model(model, path, extra=record)
            trained += 1
        index["members"][m["name"]] = index_entry(m, split, record)
        if num_shards == 1:
            atomic_write_json(root / INDEX, index)
    if missing:
        if log is not None:
            log(f"zoo {root} shard {shard}/{num_shards}: {trained} trained; {len(missing)} members of other shards "
                f"not finished yet ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); no index written")
        return None
    if num_shards > 1:
        atomic_write_json(root / INDEX, index)
    if log is not None:
        log(f"zoo {root}: {len(members)} members ({trained} trained, {len(members) - trained} reused); "
            + ", ".join(f"{k} {len(v)}" for k, v in split.items()))
    return Zoo(root, index)
