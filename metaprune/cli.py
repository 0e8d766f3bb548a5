"""Shared glue for the Hydra entry points: config to plain dict, the checks every entry point makes on its common
values (seed, device, typed options), and one clear ``error:`` line with a non-zero exit for every error a user
can cause; an internal error keeps its traceback and says it is a bug."""
from __future__ import annotations

import dataclasses
import functools
import os
import sys
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .utils import UsageError  # noqa: F401  (re-exported: the error type every entry point reports)

BUG_REPORT = ("this is a bug in metaprune, not a problem with your input: please report it to the metaprune "
              "maintainers (the project's issue tracker) with the command you ran and the traceback above")


def to_dict(cfg: DictConfig) -> dict:
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve: ${oc.env:...}, ${missing}
        key = getattr(e, "full_key", None)
        raise UsageError(f"{key + ': ' if key else ''}{_one_line(getattr(e, 'msg', None) or e)}") from None


def check_int(key: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{key}={value!r} must be an integer >= {minimum}")
    return value


def check_points(key: str, value) -> float | None:
    """``value`` must be null or points of accuracy in [0, 100] (e.g. how much val accuracy a rewrite may cost)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100):
        raise UsageError(f"{key}={value!r} must be null or points of accuracy in [0, 100]")
    return value


def check_device(device) -> None:
    """``auto``, ``cpu`` or an accelerator that is present here (``cuda``, ``cuda:N``, ``mps``)."""
    import torch

    if device == "auto":
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"device={device!r} is invalid: give auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"device={device!r}: no CUDA device is available here; use device=cpu or device=auto")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"device={device!r}: only {count} CUDA device(s) here (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device={device!r}: MPS is not available here; use device=cpu or device=auto")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"device={device!r} is not supported: give auto, cpu, cuda or cuda:N")


LOGGER_KEYS = {"kind", "project", "entity", "mode", "tags", "init_timeout", "group", "job_type"}  # logger/wandb.yaml


def check_logger(d) -> None:
    """``logger.*``, checked when the run starts (prune.py starts its logger only once pruning has succeeded)."""
    if d is None:
        return
    if not isinstance(d, dict):
        raise UsageError(f"logger={d!r} must be a logger config (logger=wandb or logger=none)")
    kind = d.get("kind", "none")
    if kind not in ("none", "wandb"):
        raise UsageError(f"logger.kind={kind!r} is invalid: must be wandb or none")
    if kind == "wandb":
        unknown = sorted(set(d) - LOGGER_KEYS)
        if unknown:
            raise UsageError(f"unknown logger option(s) {unknown}; known: {sorted(LOGGER_KEYS)}")
        for key in ("group", "job_type"):
            if d.get(key) is not None and not isinstance(d[key], str):
                raise UsageError(f"logger.{key}={d[key]!r} must be a string or null")
        timeout = d.get("init_timeout", 5.0)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise UsageError(f"logger.init_timeout={timeout!r} is invalid: must be a number of seconds > 0")


def sweep_context(job_type: str) -> dict:
    """How this Hydra job's wandb run is filed: ``dir`` the job's own folder (so a sweep's logs sit beside its
    results), ``group`` the sweep's folder name in a multirun (None in a single run), ``job_type`` and, as
    ``tags``, the command-line overrides that make this job what it is (``make_logger``'s keyword arguments)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"job_type": job_type}
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        job_dir = hc.runtime.output_dir
    except OmegaConfBaseException:  # a config composed without running a job (the compose API) has none
        job_dir = None
    return {"dir": job_dir, "group": Path(hc.sweep.dir).name if multirun else None, "job_type": job_type,
            "tags": list(hc.overrides.task)}


def sweep_job_dir(key: str) -> Path | None:
    """In a multirun, the job's own folder when ``key`` was not given on the command line (so jobs of one sweep
    never write to one place); None in a single run or when the user chose ``key``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    given = {o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.task}
    return None if key in given else Path(hc.runtime.output_dir)


def join_submitit_tasks() -> None:
    """Under the submitit SLURM launcher with several tasks (``hydra.launcher.tasks_per_node=K``), set the variables
    torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) so the K tasks form one DDP group; a no-op
    anywhere else (torchrun, a single task, no submitit)."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    from submitit import JobEnvironment
    from submitit.helpers import TorchDistributedEnvironment

    if JobEnvironment().num_tasks > 1:  # all GPUs stay visible: LOCAL_RANK picks cuda:LOCAL_RANK
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


_KINDS = {"int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
          "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
          "bool": ("true or false", lambda v: isinstance(v, bool)),
          "str": ("a string", lambda v: isinstance(v, str)),
          "None": ("null", lambda v: v is None)}


def check_types(cls, d: dict | None, label: str) -> None:
    """Each value of ``d`` has the type its field of dataclass ``cls`` declares (``int``, ``float``, ``bool``,
    ``str``, ``X | None``), so ``epochs=abc`` is one error naming ``{label}epochs`` rather than a comparison
    failing later. Fields of other types are left to the class's own checks."""
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    for key, value in (d or {}).items():
        names = [t.strip() for t in types.get(key, "").split("|")]
        if not names or not all(n in _KINDS for n in names):
            continue
        if not any(_KINDS[n][1](value) for n in names):
            want = " or ".join(_KINDS[n][0] for n in names)
            raise UsageError(f"{label}{key}={value!r} must be {want}")


def _one_line(e) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def friendly_errors(fn):
    """Turn the errors a user can cause into one clear message and a non-zero exit, not a traceback."""
    from .data import DataNotFoundError
    from .depgraph import TraceTimeoutError
    from .io import CheckpointError
    from .models import UnknownModelError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UsageError, CheckpointError, DataNotFoundError, UnknownModelError, ValueError,
                TraceTimeoutError) as e:  # bad input, a model that cannot be pruned (left unchanged), a stuck trace
            print(f"error: {_one_line(e)}", file=sys.stderr)
            sys.exit(2)
        except OSError as e:  # a file or directory we cannot read or write: permissions, a full disk...
            where = f"{e.filename}: " if e.filename else ""
            print(f"error: {where}{e.strerror or _one_line(e)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception:
            traceback.print_exc()
            print(f"error: internal error: {BUG_REPORT}", file=sys.stderr)
            sys.exit(1)

    return wrapper
