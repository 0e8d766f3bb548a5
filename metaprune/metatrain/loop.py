"""Meta-training: teach the metanetwork to rewrite zoo networks so that norm pruning removes less that matters.

One step, for each sampled meta-train network (read top to bottom)::

    graph'  = metanet(to_graph(net))                       # new weights, same architecture
    params  = graph_params(graph')                         # differentiable name -> tensor views
    task    = CE(functional_call(net, params, x), y)       # x, y: a batch of the *train* split
    reg     = sum_groups sum_units gamma_u * ||w_u||_2       # DepGraph group L2 on the transformed weights
    gamma_u = alpha ** ((max - imp_u) / (max - min))       # per group; imp = detached unit norms
    (task + lam * reg).backward()                          # only the metanetwork has parameters

Two options beyond that objective (both off by default, both on in the shipped digits run):
``reg="relative"`` divides each group's term by its total norm, so shrinking every weight no longer pays
(on digits the plain form made the metanetwork shrink whole networks and lose accuracy); ``prune_loss``
adds the task loss of the rewritten network with the units that l2 pruning to ``val_speedup`` would remove
zeroed, i.e. it trains for the pruned network that validation measures. How many units each group loses is
counted once on the original network (``prune_mask="fixed"``) or afresh on the rewritten weights every step
(``"dynamic"``: under global ranking the metanetwork can move width between layers, and the loss follows it).
``recalibrate_batches`` (off by default): a rewrite changes the weights in front of every batch norm while its
stored running statistics stay the zoo network's, so in eval mode a CNN whose function the rewrite kept sits at
chance; with N > 0 the objective normalises with batch statistics and every rewrite (validation, prune.py, the
benchmarks) re-estimates the statistics on N train batches, forward passes only.

Every ``val_every`` steps, each meta-val network is rewritten by the metanetwork, pruned to ``val_speedup``
(no finetuning) and scored on the *val* split, beside the same network pruned without the metanetwork; the
metanetwork with the best mean pruned val accuracy is kept (the test split is never read here).
Runs under ``torchrun`` with DistributedDataParallel (each rank samples from its own shard of the meta-train
networks) and resumes bit-for-bit: the networks and batches of step ``s`` depend only on ``(seed, s, rank)``.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from ..graph import from_graph, to_graph
from ..io import atomic_write_json
from ..metanet import Metanet, save_metanet
from ..prune import find_output_layers, groups, prune
from ..prune.importance import available as importance_names
from ..prune.ranking import prune_ranked_on_val
from ..train.loop import (check_options, evaluate, fit, load_resume, lr_factor, pick_device, ranking_scorer,
                          recalibrate_norms, refuse_unknown, save_resume, seed_everything)
from ..train.objectives import REGULARISERS, meta_loss


PRUNE_MASKS = ("fixed", "dynamic")


@dataclass
class MetaConfig:
    steps: int = 300
    nets_per_step: int = 2          # networks per step on each rank (gradients accumulated)
    batch_size: int = 128           # train-split samples per network and batch
    batches_per_step: int = 1       # batches whose task loss is averaged per network and step (the metanetwork
                                    # runs once; the reference sums the task loss over the whole train set)
    optimizer: str = "adamw"        # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"        # cosine | constant
    warmup_steps: int = 10
    grad_clip: float | None = 1.0
    lam: float = 1e-3               # strength of the group-sparsity regulariser
    reg: str = "l2"                 # l2: DepGraph's sum gamma*||w||; relative: the same / sum ||w|| per group;
                                    # sq_l2: the reference's adaptive squared-L2 pull sum gamma*||w||^2/2
    alpha: float = 4.0              # DepGraph adaptive strength: gamma in [1, alpha]
    task_loss: float = 1.0          # weight of the task loss of the rewritten (unpruned) network; 0 with
                                    # prune_loss > 0 trains for the pruned network alone (pruned at once)
    prune_loss: float = 0.0         # weight of the task loss of the rewritten network with the units that
                                    # l2 pruning to val_speedup would remove zeroed (0: off)
    prune_mask: str = "fixed"       # fixed: how many units each group loses is counted once, on the original
                                    # network; dynamic: recounted every step on the rewritten weights, so the
                                    # pruned-network loss sees the width the metanetwork moves between layers
    mask_temperature: float = 0.0   # > 0: the pruned-network loss reaches which units are removed (straight-through
                                    # sigmoid of each unit's distance to the pruning boundary); 0: it does not
    recalibrate_batches: int = 0    # 0: a rewritten network keeps the zoo network's stored batch-norm statistics
                                    # (stale after the rewrite); N: they are re-estimated on N train batches after
                                    # every rewrite (validation, prune.py, benchmarks) and the objective uses batch
                                    # statistics to match
    families: list | None = None    # meta-train and meta-validate on these zoo families only (a per-family
                                    # metanetwork); None: every family of the zoo (one universal metanetwork)
    val_every: int = 50             # 0: never validate; the last metanetwork is kept
    val_speedup: float = 2.0
    val_importance: str = "l2"      # l2_max with val_global: DepGraph's / the reference's ranking
    val_global: bool | str = False  # rank groups across layers (true, as DepGraph does), per layer (false), or
                                    # "val": the ranking chosen per network on val, as prune.global_pruning=val and
                                    # the benchmark's metaprune_global=val use the metanetwork (meta-val prunes both
                                    # ways; the pruned-network loss takes each meta-train network's val choice)
    loss_global: bool | None = None  # the ranking the pruned-network loss counts units with (true: global, false:
                                    # per layer); None: val_global's. E.g. val_global=val with loss_global=true trains
                                    # the rewrite to move width between layers and lets val keep it where it helps
    val_recovery_steps: int = 0     # SGD steps of recovery finetuning on train after the rewrite, before pruning
    val_recovery_lr: float = 0.01   # (the reference finetunes the rewritten network before it prunes)
    val_finetune_steps: int = 0     # SGD steps (at val_recovery_lr) after pruning, before scoring: right after
                                    # pruning to 2-4x every network sits at chance, so 0 steps scores noise
    val_limit: int | None = None    # val samples per evaluation (None: the whole val split)
    save_every: int = 50            # resume checkpoint period (steps)
    log_every: int = 10

    @classmethod
    def from_dict(cls, d: dict | None) -> "MetaConfig":
        d = dict(d or {})
        refuse_unknown(cls, d, "meta_optim")
        d["families"] = family_list(d.get("families"))
        cfg = cls(**d)
        checks = [
            (cfg.steps >= 0, "steps", ">= 0"), (cfg.nets_per_step >= 1, "nets_per_step", ">= 1"),
            (cfg.batch_size >= 1, "batch_size", ">= 1"), (cfg.batches_per_step >= 1, "batches_per_step", ">= 1"),
            (cfg.optimizer in ("adamw", "sgd"), "optimizer", "adamw or sgd"),
            (cfg.lr > 0, "lr", "> 0"), (cfg.schedule in ("cosine", "constant"), "schedule", "cosine or constant"),
            (cfg.lam >= 0, "lam", ">= 0"), (cfg.reg in REGULARISERS, "reg", " or ".join(REGULARISERS)),
            (cfg.alpha >= 1, "alpha", ">= 1"), (cfg.prune_loss >= 0, "prune_loss", ">= 0"),
            (cfg.task_loss >= 0, "task_loss", ">= 0"), (cfg.mask_temperature >= 0, "mask_temperature", ">= 0"),
            (isinstance(cfg.recalibrate_batches, int) and cfg.recalibrate_batches >= 0, "recalibrate_batches",
             "an integer >= 0"),
            (cfg.prune_mask in PRUNE_MASKS, "prune_mask", " or ".join(PRUNE_MASKS)),
            (cfg.families is None or len(cfg.families) > 0, "families", "a non-empty list of zoo families or null"),
            (cfg.val_every >= 0, "val_every", ">= 0 (0: no validation)"),
            (cfg.val_speedup > 1, "val_speedup", "> 1"), (cfg.save_every >= 1, "save_every", ">= 1"),
            (cfg.val_importance in importance_names(), "val_importance", " or ".join(importance_names())),
            (cfg.val_global is True or cfg.val_global is False or cfg.val_global == "val", "val_global",
             "true, false or val"),
            (cfg.loss_global is None or isinstance(cfg.loss_global, bool), "loss_global",
             "true, false or null (val_global's ranking)"),
            (cfg.val_recovery_steps >= 0, "val_recovery_steps", ">= 0"),
            (cfg.val_recovery_lr > 0, "val_recovery_lr", "> 0"),
            (cfg.val_finetune_steps >= 0, "val_finetune_steps", ">= 0"),
            (cfg.log_every >= 1, "log_every", ">= 1"),
        ]
        check_options(cfg, checks, "meta_optim.")
        return cfg


def family_list(families) -> list[str] | None:
    """A families option as a list of names: one name (``families=resnet``) or a list; None stays None (all)."""
    if families is None:
        return None
    return [families] if isinstance(families, str) else [str(f) for f in families]


def check_families(families, known, key: str = "meta_optim.families") -> None:
    """The option ``key`` must name families of the zoo (``known``: the zoo members' families)."""
    unknown = sorted(set(families or ()) - set(known))
    if unknown:
        raise ValueError(f"{key}: {unknown} not in the zoo; the zoo's families: {sorted(set(known))}")


# --- one zoo network, ready for meta-training -------------------------------------------------------------

@dataclass
class NetCase:
    name: str
    model: nn.Module          # eval mode; its own weights are never changed
    graph: object             # NetGraph of the original weights
    groups: list              # metaprune.prune Group (channel units as parameter slices)
    buffers: frozenset        # names of buffers (running statistics): read, never differentiated
    removed: list | None = None  # per group: units that pruning to the val speedup removes (prune_loss)
    global_pruning: bool = False  # the ranking the pruned-network loss counts units with (prune_loss)


def prepare(zoo, names, example_inputs, device="cpu", speedup: float | None = None, importance: str = "l2",
            global_pruning: bool | str = False, count: bool = True, score=None) -> list[NetCase]:
    """Load zoo members and precompute their graphs and DepGraph groups (classifier protected). With ``speedup``,
    also each network's ranking at that speedup (``global_pruning``; ``"val"``: chosen on the original network by
    ``score``, as :func:`pruned_accuracy` chooses) and, unless ``count`` is false, how many units of each group
    pruning to it (with ``importance``, as validation prunes) removes."""
    if speedup is not None and global_pruning == "val" and score is None:
        raise ValueError("val_global=val needs the data to choose each network's ranking on")
    cases = []
    for name in names:
        model = zoo.load(name).to(device).eval()
        ex = example_inputs.to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        case_groups = groups(model, ex, ignored=find_output_layers(model, ex))
        ranking = global_pruning
        if speedup is not None and global_pruning == "val":
            ranking = prune_ranked_on_val(model, _pruner(ex, speedup, importance), score)[2]["chosen"] == "global"
        removed = removed_units(model, ex, case_groups, speedup, importance, ranking) if speedup and count else None
        cases.append(NetCase(name, model, to_graph(model, ex).to(device), case_groups,
                             frozenset(n for n, _ in model.named_buffers()), removed, ranking is True))
    return cases


def _pruner(example_inputs, speedup: float, importance: str):
    """``prune_fn(network, global_pruning)`` for :func:`prune_ranked_on_val`: prunes ``network`` in place."""
    def prune_fn(net: nn.Module, global_pruning: bool):
        for p in net.parameters():  # torch-pruning traces through autograd
            p.requires_grad_(True)
        return prune(net, example_inputs, target_speedup=speedup, importance=importance,
                     global_pruning=global_pruning)
    return prune_fn


def removed_units(model: nn.Module, example_inputs, case_groups, speedup: float, importance: str = "l2",
                  global_pruning: bool = False, state: dict | None = None) -> list[int]:
    """Per group of ``case_groups``: how many units pruning a copy of ``model`` (with the weights ``state``, e.g. the
    metanetwork's rewrite, when given) to ``speedup`` removes; ``model`` itself is not changed."""
    model = copy.deepcopy(model)
    if state is not None:
        model.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False)
    channels = _pruner(example_inputs, speedup, importance)(model, global_pruning).channels
    return [channels[g.root][0] - channels[g.root][1] if g.root in channels else 0 for g in case_groups]


def pruned_accuracy(model: nn.Module, example_inputs, loader, speedup: float, importance: str = "l2",
                    device="cpu", global_pruning: bool | str = False, finetune: dict | None = None,
                    score=None) -> dict:
    """Accuracy of ``model`` before and after pruning a copy to ``speedup`` on ``loader``; with ``finetune``
    (the keyword arguments of :func:`recover`, with its ``data``), after that short finetune of the pruned copy.
    ``global_pruning="val"``: both rankings prune a copy and the one ``score`` rates higher goes on
    (:func:`metaprune.prune.ranking.prune_ranked_on_val`); ``ranking`` in the result says which."""
    model = copy.deepcopy(model).eval()
    before = evaluate(model, loader, device)["acc"]
    prune_fn = _pruner(example_inputs, speedup, importance)
    out = {}
    if global_pruning == "val":
        if score is None:
            raise ValueError("global_pruning='val' needs the score that chooses the ranking")
        model, res, chosen = prune_ranked_on_val(model, prune_fn, score)
        out["ranking"] = chosen["chosen"]
    else:
        res = prune_fn(model, global_pruning)
    if finetune:
        recover(model, **finetune)
    after = evaluate(model, loader, device)["acc"]
    return {"acc": after, "unpruned_acc": before, "speedup": res.speedup, **out}


def rewrite(metanet, case: NetCase, data=None, recalibrate: int = 0, seed: int = 0, device="cpu") -> nn.Module:
    """A copy of the case's network with the weights the metanetwork writes; with ``recalibrate`` batches (of
    ``data``'s train split), its batch-norm statistics re-estimated for the new weights."""
    with torch.no_grad():
        model = from_graph(getattr(metanet, "module", metanet).eval().transform(case.graph), case.model).eval()
    return recalibrate_norms(model, data, recalibrate, seed=seed, device=device)


def recover(model: nn.Module, data, steps: int, lr: float = 0.01, batch_size: int = 128, seed: int = 0,
            device="cpu") -> nn.Module:
    """``steps`` SGD steps on the train split (the recovery finetune the reference runs between the rewrite and
    pruning; 0: none); the model is returned in eval mode."""
    if steps:
        for p in model.parameters():
            p.requires_grad_(True)
        fit(model, data, {"epochs": 1, "max_steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed,
                          "device": str(device), "val_each_epoch": False, "progress": False})
    return model.eval()


def validate(metanet, cases, example_inputs, loader, cfg: MetaConfig, device="cpu", baseline=None, data=None,
             seed: int = 0) -> dict:
    """Mean pruned val accuracy of meta-val networks with the metanetwork (``acc``: rewrite, recovery
    finetune of ``val_recovery_steps`` on ``data``, prune, finetune of ``val_finetune_steps``) and, when
    ``baseline`` is None, without it (computed once: the original networks do not change)."""
    if (cfg.val_recovery_steps or cfg.val_finetune_steps) and data is None:
        raise ValueError("val_recovery_steps and val_finetune_steps need the data to finetune on")
    recovery = {"steps": cfg.val_recovery_steps, "lr": cfg.val_recovery_lr, "batch_size": cfg.batch_size,
                "seed": seed, "device": device}
    if cfg.val_global == "val" and data is None:
        raise ValueError("val_global=val needs the data to choose each network's ranking on")
    prune_kw = {"importance": cfg.val_importance, "device": device, "global_pruning": cfg.val_global,
                "finetune": {**recovery, "data": data, "steps": cfg.val_finetune_steps},
                "score": ranking_scorer(data, cfg.batch_size, seed, device) if cfg.val_global == "val" else None}
    if cfg.recalibrate_batches and data is None:
        raise ValueError("recalibrate_batches needs the data to re-estimate the batch norms on")
    rewritten = lambda c: rewrite(metanet, c, data, cfg.recalibrate_batches, seed, device)  # noqa: E731
    per = {c.name: pruned_accuracy(recover(rewritten(c), data, **recovery), example_inputs, loader,
                                   cfg.val_speedup, **prune_kw) for c in cases}
    if baseline is None:
        baseline = {c.name: pruned_accuracy(c.model, example_inputs, loader, cfg.val_speedup, **prune_kw)
                    for c in cases}
    mean = lambda d, k: sum(v[k] for v in d.values()) / max(len(d), 1)  # noqa: E731
    chosen = {"ranked_global": sum(v["ranking"] == "global" for v in per.values())} if cfg.val_global == "val" else {}
    return {"pruned_acc": mean(per, "acc"), "unpruned_acc": mean(per, "unpruned_acc"),
            "pruned_acc_base": mean(baseline, "acc"), "unpruned_acc_base": mean(baseline, "unpruned_acc"),
            "per_network": per, "baseline": baseline, **chosen}


# --- the loop ---------------------------------------------------------------------------------------------

def _batch(dataset, idx: torch.Tensor):
    if hasattr(dataset, "x") and hasattr(dataset, "y"):  # in-memory TensorPairs
        return dataset.x[idx], dataset.y[idx]
    items = [dataset[int(i)] for i in idx]
    return torch.stack([torch.as_tensor(a) for a, _ in items]), torch.as_tensor([int(b) for _, b in items])


def _sample(step: int, seed: int, rank: int, n_nets: int, k: int, n_data: int, batch: int, batches: int = 1):
    """Networks of ``step`` on ``rank`` and, per network, ``batches`` disjoint batches of indices: a function of
    (seed, step, rank) only (resume-exact)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step * 1009 + rank)
    nets = torch.randperm(n_nets, generator=g)[:k] if k <= n_nets else torch.randint(n_nets, (k,), generator=g)
    idx = [torch.randperm(n_data, generator=g)[:batch * batches].split(batch) for _ in range(len(nets))]
    return nets.tolist(), idx


def dist_info() -> tuple[int, int]:
    """``(rank, world size)`` of the torchrun process group, ``(0, 1)`` outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _resume_dir(out_dir: Path) -> Path:
    return out_dir.parent / f".{out_dir.name}.resume"


_RESUME_ENTRIES = {"metanet": dict, "opt": dict, "step": int, "best": (dict, type(None)), "history": list,
                   "recipe": dict}


def meta_train(zoo, data, metanet_cfg: dict, cfg: MetaConfig | dict, out_dir, *, seed: int = 0, device="auto",
               resume: bool = False, logger=None, progress: bool = True, run_config: dict | None = None,
               stop_after: int | None = None) -> dict:
    """Meta-train a metanetwork on ``zoo`` (its ``train`` split), select it on the ``val`` split networks, and
    save the best to ``out_dir`` (safetensors + config JSON + zoo split). Returns a summary.

    ``metanet_cfg``: Metanet keywords (hidden, layers, aggr, scale, frozen_features, unseen).
    ``stop_after``: stop (as if interrupted) after this many steps; a later ``resume=True`` call continues.
    ``resume``: continue from the last resume state, which must exist and match this run's metanetwork, optimizer
    and settings (see ``load_resume``); otherwise a ``ResumeError`` before anything is written.
    """
    cfg = cfg if isinstance(cfg, MetaConfig) else MetaConfig.from_dict(cfg)
    rank, world = dist_info()
    device = pick_device(device) if isinstance(device, str) else device
    out_dir = Path(out_dir)
    seed_everything(seed)
    ex = data.example_inputs()
    log = logger.log if (logger is not None and rank == 0) else (lambda *a, **k: None)

    train_names, val_names = zoo.names("train", cfg.families), zoo.names("val", cfg.families)
    check_families(cfg.families, [m["family"] for m in zoo.members.values()])
    if cfg.families is not None and not train_names:
        raise ValueError(f"meta_optim.families: {cfg.families} have no meta-train network in the zoo")
    if len(train_names) < world:
        raise ValueError(f"{len(train_names)} meta-train networks cannot be shared by {world} ranks")
    counted_once = cfg.prune_loss > 0 and cfg.prune_mask == "fixed"
    train_cases = prepare(zoo, train_names, ex, device, cfg.val_speedup if cfg.prune_loss > 0 else None,
                          cfg.val_importance, cfg.val_global if cfg.loss_global is None else cfg.loss_global,
                          count=counted_once,
                          score=ranking_scorer(data, cfg.batch_size, seed, device))
    mine = train_cases[rank::world]
    val_cases = prepare(zoo, val_names, ex, device) if rank == 0 and cfg.val_every else []
    torch.manual_seed(seed)  # the metanetwork's initial weights depend only on the seed
    metanet = Metanet.for_graphs([c.graph for c in train_cases], **metanet_cfg).to(device)
    model = metanet
    if world > 1:
        model = nn.parallel.DistributedDataParallel(metanet, find_unused_parameters=True,
                                                    device_ids=[device.index] if device.type == "cuda" else None)
    params = [p for p in metanet.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if cfg.optimizer == "adamw"
           else torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay))

    val_loader = data.loader("val", 512, shuffle=False, limit=cfg.val_limit, seed=seed)
    start, best, history = 0, None, []
    rdir = _resume_dir(out_dir)
    # the settings that shape the trajectory: a resumed run must use the ones the state was written with
    recipe = {"meta_optim": {k: v for k, v in asdict(cfg).items() if k not in ("save_every", "log_every")},
              "metanet": dict(metanet_cfg), "seed": seed, "world_size": world, "data": data.name,
              "train_networks": train_names}
    state = load_resume(rdir, device, model=metanet, opt=opt, weights="metanet", counter="step", total=cfg.steps,
                        recipe=recipe, entries=_RESUME_ENTRIES, required=True) if resume else None
    if state is not None:
        metanet.load_state_dict(state["metanet"])
        opt.load_state_dict(state["opt"])
        start, best, history = state["step"], state["best"], state["history"]
    extra = {"run": run_config or {}, "meta_optim": asdict(cfg), "seed": seed, "zoo": str(zoo.root),
             "data": data.name, "train_networks": train_names, "val_networks": val_names}
    split = {**zoo.split, "zoo": str(zoo.root)}
    baseline = None

    def validate_and_keep(step: int):
        nonlocal best, baseline
        if rank != 0 or not val_cases or not cfg.val_every:
            return
        v = validate(metanet, val_cases, ex, val_loader, cfg, device, baseline, data, seed)
        baseline = v["baseline"]
        rec = {k: v[k] for k in ("pruned_acc", "pruned_acc_base", "unpruned_acc", "unpruned_acc_base",
                                 "ranked_global") if k in v}
        history.append({"step": step, **rec})
        log({f"val/{k}": x for k, x in rec.items()}, step=step)
        if best is None or v["pruned_acc"] > best["pruned_acc"]:
            best = {"step": step, **rec}
            save_metanet(metanet, out_dir, extra={**extra, "best": best, "val_speedup": cfg.val_speedup,
                                                  "history": history}, split=split)

    if start == 0:
        validate_and_keep(0)  # step 0: the identity metanetwork, i.e. the no-metanetwork baseline
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(range(start, end), desc="meta-train", disable=not progress or rank != 0, dynamic_ncols=True)
    t0 = time.perf_counter()
    for step in bar:
        model.train()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.schedule)
        nets, idxs = _sample(step, seed, rank, len(mine), cfg.nets_per_step, len(data.train), cfg.batch_size,
                             cfg.batches_per_step)
        opt.zero_grad(set_to_none=True)
        agg = {}
        for i, (n, idx) in enumerate(zip(nets, idxs)):
            batches = [tuple(t.to(device) for t in _batch(data.train, b)) for b in idx]
            sync = world == 1 or i == len(nets) - 1
            recount = None
            if cfg.prune_loss > 0 and cfg.prune_mask == "dynamic":
                recount = functools.partial(removed_units, mine[n].model, ex.to(device), mine[n].groups,
                                            cfg.val_speedup, cfg.val_importance, mine[n].global_pruning)
            with contextlib.nullcontext() if sync else model.no_sync():
                loss, stats = meta_loss(model, mine[n], batches, cfg.lam, cfg.alpha, cfg.reg, cfg.prune_loss,
                                        recount, cfg.task_loss, batch_stats=cfg.recalibrate_batches > 0,
                                        mask_temperature=cfg.mask_temperature)
                (loss / len(nets)).backward()
            for k, v in {"loss": loss.item(), **stats}.items():
                agg[k] = agg.get(k, 0.0) + v / len(nets)
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        done = step + 1
        bar.set_postfix(loss=f"{agg['loss']:.3f}", task=f"{agg['task']:.3f}", small=f"{agg['small_units']:.2f}")
        if done % cfg.log_every == 0 or done == cfg.steps:
            log({f"meta/{k}": v for k, v in agg.items()} | {"meta/lr": opt.param_groups[0]["lr"],
                                                             "meta/seconds": time.perf_counter() - t0}, step=done)
        if cfg.val_every and (done % cfg.val_every == 0 or done == cfg.steps):
            validate_and_keep(done)
        if rank == 0 and (done % cfg.save_every == 0 or done == end):
            save_resume(rdir, metanet=metanet.state_dict(), opt=opt.state_dict(), step=done, best=best,
                        history=history, recipe=recipe)
    finished = (stop_after is None or start + stop_after >= cfg.steps)
    if rank == 0 and finished and (not cfg.val_every or not val_cases):  # nothing to select on: keep the last
        save_metanet(metanet, out_dir, extra={**extra, "best": None, "history": history}, split=split)
    elif rank == 0 and finished and (out_dir / "config.json").is_file():  # the whole val curve beside the best
        saved = json.loads((out_dir / "config.json").read_text())
        atomic_write_json(out_dir / "config.json", {**saved, "history": history})
    if world > 1:
        dist.barrier()
    if rank == 0 and finished and logger is not None:
        logger.summary({f"best/{k}": v for k, v in (best or {}).items()})
        logger.artifact(out_dir, name=f"metanet-{out_dir.name}", kind="model")
    return {"out_dir": str(out_dir), "best": best, "history": history, "steps": end, "finished": finished,
            "metanet": metanet}


