"""Shared glue for the Hydra entry points: config to plain dict, clear one-line errors, exit codes."""
from __future__ import annotations

import functools
import sys

from omegaconf import DictConfig, OmegaConf


class UsageError(ValueError):
    """Bad user input caught at the boundary; reported as one sentence and exit code 2."""


def to_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def friendly_errors(fn):
    """Turn the errors a user can cause into one clear message and a non-zero exit, not a traceback."""
    from .data import DataNotFoundError
    from .io import CheckpointError
    from .models import UnknownModelError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (UsageError, CheckpointError, DataNotFoundError, UnknownModelError, ValueError, FileExistsError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper
