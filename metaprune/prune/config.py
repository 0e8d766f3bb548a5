"""The ``prune.py`` run's settings as one validated object: every value is checked when the run starts, before
any model or data is loaded, and a bad one is one :class:`~metaprune.cli.UsageError` naming its key.

``PruneConfig.from_dict(cfg)`` takes the composed config (``configs/prune.yaml``) or a partial plain dict (the
defaults below fill the rest).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import UsageError, check_device, check_int, check_logger, check_points, check_types
from ..depgraph import ATTENTION_UNITS
from ..export import parse_formats
from ..metanet.resolve import resolve_metanet
from ..train import TrainConfig, split_data_cfg
from ..train.loop import check_options, refuse_unknown
from .at_init import CRITERIA as INIT_CRITERIA
from .importance import available as importance_names
from .ranking import ATTENTION_RULE, is_margin

STAGES = ("init", "trained", "trained_nofinetune")
TARGETS = ("speedup", "params", "latency_speedup")
LATENCY_DTYPES = ("float32", "bfloat16")
LEGACY = {"export_onnx": "export=onnx (or export=both)"}  # removed key -> its replacement
OTHER_KEYS = {"logger", *LEGACY}  # read by prune.py / refused above, not by the run


@dataclass
class PruneOptions:
    """``prune.*``: how groups are ranked and cut."""
    importance: str = "l2"
    init_criterion: str = "snip"
    global_pruning: bool | str | None = None   # None: the route's default (OBS ranks globally, the others per
                                               # layer); "val": global or per layer, chosen on val (prune.ranking);
                                               # "attention": global for transformers, per layer for the others
    ranking_probe_steps: int = 0               # with global_pruning=val: 0 scores each candidate's val accuracy
                                               # (batch norms re-estimated); N > 0 its val loss after N SGD steps
    ranking_margin: float = 0.0                # with global_pruning=val: global ranking must lead per-layer ranking
                                               # by at least this much (score units; 0: a tie keeps global)
    round_to: int | str | None = None
    ignored_layers: tuple = ()
    attention_unit: str = "auto"         # dim | head | auto: what one unit of an attention removes


@dataclass
class LatencyOptions:
    """``latency.*``: how latency is measured (report and ``target.latency_speedup``)."""
    batch_size: int = 1
    dtype: str = "float32"
    warmup: int = 5
    runs: int = 20


@dataclass
class ModelSource:
    """``model.*``: what to prune."""
    checkpoint: str | None = None
    name: str | None = None
    args: dict | None = None
    onnx: str | None = None


@dataclass
class MetanetOptions:
    """``metanet.*``: the metanetwork applied before pruning (``checkpoint``: auto | none | PATH)."""
    checkpoint: str | None = "auto"
    finetune_epochs: int | str = "auto"   # recovery after the rewrite; auto: what the metanetwork was validated with
    recalibrate_batches: int | str = "auto"  # train batches re-estimating batch-norm statistics after the rewrite;
                                             # auto: what the metanetwork was meta-trained with
    max_val_drop: float | None = None    # points of val accuracy the rewrite may cost (batch norms re-estimated);
                                         # a rewrite that costs more is undone (None: always kept)


@dataclass
class PruneConfig:
    model: ModelSource
    data: dict
    output_dir: str
    target: dict                      # {"speedup" | "params" | "latency_speedup": value}, exactly one
    stage: str = "trained"
    prune: PruneOptions = field(default_factory=PruneOptions)
    metanet: MetanetOptions = field(default_factory=MetanetOptions)
    metanet_checkpoint: Path | None = None  # where metanet.checkpoint points for this dataset (None: none)
    finetune: TrainConfig = field(default_factory=TrainConfig)
    latency: LatencyOptions = field(default_factory=LatencyOptions)
    export: list = field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    overwrite: bool = False
    raw: dict = field(default_factory=dict, repr=False)  # the dict as given: report.json keeps it verbatim

    @property
    def target_kind(self) -> str:
        return next(iter(self.target))

    @classmethod
    def from_dict(cls, cfg: dict, progress: bool = True) -> "PruneConfig":
        """Validate ``cfg``; ``progress`` (tqdm bars) goes to the finetune's TrainConfig."""
        cfg = dict(cfg)
        for key, instead in LEGACY.items():
            if cfg.get(key) is not None:
                raise UsageError(f"{key} is gone: use {instead}")
        known = {f.name for f in dataclasses.fields(cls)} - {"metanet_checkpoint", "raw"} | OTHER_KEYS
        if set(cfg) - known:
            raise UsageError(f"unknown option(s) {sorted(set(cfg) - known)}; known: {sorted(known)}")
        for key in ("model", "data", "output_dir"):
            if cfg.get(key) is None:
                raise UsageError(f"{key} is required")
        check_int("seed", cfg.get("seed", 0), 0)
        if cfg.get("threads") is not None:
            check_int("threads", cfg["threads"], 1)
        if cfg.get("overwrite", False) not in (True, False):
            raise UsageError(f"overwrite={cfg['overwrite']!r} must be true or false")
        check_device(cfg.get("device") or "auto")
        check_logger(cfg.get("logger"))
        stage = cfg.get("stage") or "trained"
        if stage not in STAGES:
            raise UsageError(f"stage={stage!r} is invalid: must be one of {', '.join(STAGES)}")
        try:
            export = parse_formats(cfg.get("export"))
        except ValueError as e:
            raise UsageError(str(e)) from None
        if not isinstance(cfg["data"], dict) or not cfg["data"].get("name"):
            raise UsageError(f"data={cfg['data']!r} must be a data config with a name (e.g. data=digits)")
        data = dict(cfg["data"])
        model = _model_source(cfg["model"], stage)
        prune = _prune_options(cfg.get("prune"))
        target = _target(cfg.get("target"), stage, prune.importance)
        special = _special_route(stage, prune.importance)
        if special and prune.attention_unit != "auto":
            raise UsageError(f"prune.attention_unit={prune.attention_unit!r} applies to one-shot pruning; {special} "
                             "prunes through torch-pruning's own pruner: leave prune.attention_unit=auto")
        if prune.global_pruning == "val" and (special or "latency_speedup" in target):
            raise UsageError("prune.global_pruning=val chooses the ranking of one-shot pruning to a MACs or parameter "
                             f"target; give true or false with {special or 'target.latency_speedup'}")
        if prune.global_pruning == ATTENTION_RULE and special:
            raise UsageError("prune.global_pruning=attention chooses the ranking of metaprune's own pruner; give true "
                             f"or false with {special}")
        metanet = _metanet_options(cfg.get("metanet"))
        return cls(model=model, data=data, output_dir=str(cfg["output_dir"]),
                   target=target, stage=stage, prune=prune, metanet=metanet,
                   metanet_checkpoint=resolve_metanet(metanet.checkpoint, data.get("name")),
                   finetune=_finetune(cfg, stage, data, progress), latency=_latency_options(cfg.get("latency")),
                   export=export, seed=cfg.get("seed", 0), device=cfg.get("device") or "auto",
                   threads=cfg.get("threads"), overwrite=bool(cfg.get("overwrite", False)), raw=cfg)


def _sub(cls, d, key: str):
    """Dataclass ``cls`` from the config section ``key`` (unknown keys refused, naming the section)."""
    if d is None:
        return cls()
    if not isinstance(d, dict):
        raise UsageError(f"{key}={d!r} must be a mapping of {', '.join(f.name for f in dataclasses.fields(cls))}")
    try:
        refuse_unknown(cls, d, key)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return cls(**d)


def _model_source(d, stage: str) -> ModelSource:
    src = _sub(ModelSource, d, "model")
    if not src.checkpoint and not src.onnx:
        if stage != "init":
            raise UsageError("model.checkpoint is required: a metaprune checkpoint directory or a state dict file "
                             "(or model.onnx)")
        if not src.name:
            raise UsageError("stage=init needs model.name (+ model.args) to build a fresh network, "
                             "or model.checkpoint")
    return src


def _checked(opts, checks, label: str):
    try:
        check_options(opts, checks, label)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return opts


def _prune_options(d) -> PruneOptions:
    d = dict(d or {})
    ignored = d.get("ignored_layers")
    if isinstance(ignored, str):  # prune.ignored_layers=fc: one layer, not the letters f and c
        d["ignored_layers"] = (ignored,)
    elif ignored is None or (isinstance(ignored, (list, tuple)) and all(isinstance(n, str) for n in ignored)):
        d["ignored_layers"] = tuple(ignored or ())
    else:
        raise UsageError(f"prune.ignored_layers={ignored!r} must be a list of module names")
    opts = _sub(PruneOptions, d, "prune")
    names = [*importance_names(), "obs"]
    r = opts.round_to
    return _checked(opts, [
        (str(opts.importance).lower() in names, "importance", f"one of {', '.join(names)}"),
        (opts.init_criterion in INIT_CRITERIA, "init_criterion", f"one of {', '.join(INIT_CRITERIA)}"),
        (opts.global_pruning in (True, False, None, "val", ATTENTION_RULE), "global_pruning",
         "true, false, val (chosen per network on val) or attention (global for transformers, per layer otherwise)"),
        (isinstance(opts.ranking_probe_steps, int) and not isinstance(opts.ranking_probe_steps, bool)
         and opts.ranking_probe_steps >= 0, "ranking_probe_steps", "an integer >= 0 (SGD steps per candidate)"),
        (is_margin(opts.ranking_margin), "ranking_margin",
         "a number in [0, 1) (how far global ranking must lead on val; 0.05 = 5 points)"),
        (r is None or r == "auto" or (isinstance(r, int) and not isinstance(r, bool) and r >= 1), "round_to",
         "null, auto or an integer >= 1"),
        (opts.attention_unit in ATTENTION_UNITS, "attention_unit", f"one of {', '.join(ATTENTION_UNITS)}"),
    ], "prune.")


def _latency_options(d) -> LatencyOptions:
    opts = _sub(LatencyOptions, d, "latency")
    pos = lambda v, low=1: isinstance(v, int) and not isinstance(v, bool) and v >= low  # noqa: E731
    return _checked(opts, [
        (opts.dtype in LATENCY_DTYPES, "dtype", " or ".join(LATENCY_DTYPES)),
        (pos(opts.batch_size), "batch_size", "an integer > 0"),
        (pos(opts.runs), "runs", "an integer > 0"),
        (pos(opts.warmup, 0), "warmup", "an integer >= 0"),
    ], "latency.")


def _special_route(stage: str, importance: str) -> str | None:
    """The setting that sends the run through torch-pruning's own pruner (pruning at init, OBS), or None."""
    return "stage=init" if stage == "init" else "prune.importance=obs" if importance == "obs" else None


def _target(d, stage: str, importance: str) -> dict:
    """Exactly one of target.speedup / params / latency_speedup, a number > 1. ``params`` or
    ``latency_speedup`` replaces the composed default ``speedup``."""
    d = dict(d or {})
    unknown = sorted(set(d) - set(TARGETS))
    if unknown:
        raise UsageError(f"unknown target option(s) {unknown}; known: {list(TARGETS)}")
    given = {k: d[k] for k in TARGETS if d.get(k) is not None}
    if "params" in given and "latency_speedup" in given:
        raise UsageError("set only one of target.params and target.latency_speedup")
    if len(given) > 1:
        given.pop("speedup")
    if not given:
        raise UsageError("set target.speedup (base MACs / pruned MACs), target.params (base / pruned params) or "
                         "target.latency_speedup (measured base / pruned latency)")
    (key, val), = given.items()
    if isinstance(val, bool) or not (isinstance(val, (int, float)) and val > 1):
        raise UsageError(f"target.{key}={val!r} must be a number > 1 (base / pruned); 1 means no pruning")
    special = _special_route(stage, importance)
    if special and key != "speedup":
        raise UsageError(f"{special} takes target.speedup (MACs), not target.params / target.latency_speedup")
    return {key: val}


def _metanet_options(d) -> MetanetOptions:
    if d in (None, False, "none") or (isinstance(d, dict) and d.get("name") == "none"):
        return MetanetOptions(checkpoint=None)
    if not isinstance(d, dict):
        raise UsageError(f"metanet={d!r}: give metanet=none or metanet.checkpoint=PATH")
    if {"hidden", "layers"} & set(d):
        raise UsageError("metanet holds an architecture preset (configs/metanet/, for train_meta.py); prune.py "
                         "applies a trained one: metanet=shipped|none or metanet.checkpoint=PATH")
    opts = _sub(MetanetOptions, d, "metanet")
    for key in ("finetune_epochs", "recalibrate_batches"):
        if getattr(opts, key) != "auto":
            check_int(f"metanet.{key}", getattr(opts, key), 0)
    check_points("metanet.max_val_drop", opts.max_val_drop)
    return opts


def _finetune(cfg: dict, stage: str, data: dict, progress: bool) -> TrainConfig:
    ft = dict(cfg.get("finetune") or {})
    if "epochs" in ft:
        check_int("finetune.epochs", ft["epochs"], 0)
    check_types(TrainConfig, ft, "finetune.")
    if stage == "trained_nofinetune":
        ft["epochs"] = 0
    try:
        return TrainConfig.from_dict({**ft, **split_data_cfg(data)[1], "seed": cfg.get("seed", 0),
                                      "device": cfg.get("device", "auto"), "progress": progress})
    except (TypeError, ValueError) as e:
        raise UsageError(f"finetune: {e}") from None
