"""Which metanetwork a pruning run applies, and applying it to a network about to be pruned.

``resolve_metanet("auto", data_name)`` is the one shipped for the run's dataset (``checkpoints/metanet/<data>``,
e.g. the LSTM one for ``digits_seq``), else the digits one; ``None``/``"none"`` is no metanetwork; anything
else is a path. ``rewrite_for_pruning`` applies it, and leaves a network with neuron or weight types a shipped
metanetwork never saw as it is, with a note, instead of rewriting it with borrowed encoders.
"""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from ..io import CheckpointError, read_json
from .checkpoint import UnseenTypesError, apply_metanet

SHIPPED = Path("checkpoints/metanet")


def resolve_metanet(checkpoint, data_name: str | None) -> Path | None:
    """The metanetwork directory ``metanet.checkpoint`` names for a run on ``data_name`` (None: none);
    :class:`CheckpointError` if it does not exist.

    ``auto`` skips, with a note, a shipped metanetwork whose ``config.json`` says ``apply.auto: false`` (one that
    lost to plain pruning on its held-out networks): it is applied only when named by path."""
    if checkpoint in (None, "none", False):
        return None
    if checkpoint == "auto":
        own = SHIPPED / str(data_name)
        path = own if (own / "metanet.safetensors").is_file() else SHIPPED / "digits"
        why = _not_by_default(path)
        if why:
            print(f"note: metanet=auto applies no metanetwork: {path} {why}; metanet.checkpoint={path} applies it")
            return None
    else:
        path = Path(checkpoint)
    if not path.exists():
        raise CheckpointError(f"{path}: metanetwork checkpoint not found")
    return path


def _config(checkpoint: Path) -> tuple[Path, dict]:
    """A metanetwork's ``config.json`` (``{}`` when it has none) and its path."""
    path = Path(checkpoint) / "config.json"
    cfg = read_json(path, what="metanetwork config") if path.is_file() else {}
    return path, (cfg if isinstance(cfg, dict) else {})


def _apply_settings(checkpoint: Path) -> tuple[Path, dict]:
    """The ``apply`` settings a metanetwork's ``config.json`` records for prune.py (``{}`` when it names none)."""
    path, cfg = _config(checkpoint)
    return path, (cfg.get("apply") or {})


def _recorded_count(checkpoint: Path | None, asked, key: str, trained_key: str | None = None) -> int:
    """``asked`` when it is a number, else (``auto``) ``apply.<key>`` of the metanetwork's ``config.json``, else its
    ``meta_optim.<trained_key>`` (what it was meta-trained with), else 0; 0 for ``checkpoint`` None (a caller's
    own transform). A recorded value that is not an integer >= 0 is a :class:`CheckpointError`."""
    if asked != "auto":
        return int(asked)
    if checkpoint is None:
        return 0
    path, cfg = _config(checkpoint)
    trained = (cfg.get("meta_optim") or {}).get(trained_key, 0) if trained_key else 0
    n = (cfg.get("apply") or {}).get(key, trained)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise CheckpointError(f"{path}: apply.{key}={n!r} must be an integer >= 0")
    return n


def _not_by_default(checkpoint: Path) -> str | None:
    """Why ``auto`` must not apply the metanetwork at ``checkpoint`` (``apply.auto: false`` and its reason)."""
    apply = _apply_settings(checkpoint)[1]
    if apply.get("auto", True) is False:
        return str(apply.get("why_not_auto") or "is marked apply.auto=false")
    return None


def recovery_epochs(checkpoint: Path | None, asked) -> int:
    """Epochs of recovery finetuning after the rewrite: ``asked`` when it is a number, else (``auto``) the ones the
    metanetwork at ``checkpoint`` was selected with (``apply.finetune_epochs`` in its ``config.json``; 0 when it
    names none, or for a caller's own transform: ``checkpoint`` None)."""
    return _recorded_count(checkpoint, asked, "finetune_epochs")


def recalibration_batches(checkpoint: Path | None, asked="auto") -> int:
    """Train batches that re-estimate the batch norms' statistics right after the rewrite: ``asked`` when it is a
    number, else (``auto``) what the metanetwork was meta-trained and selected with (``apply.recalibrate_batches``
    or ``meta_optim.recalibrate_batches`` in its ``config.json``; 0 when it names none, or for a caller's own
    transform: ``checkpoint`` None)."""
    return _recorded_count(checkpoint, asked, "recalibrate_batches", "recalibrate_batches")


def rewrite_for_pruning(checkpoint: Path, model: nn.Module, example_inputs, seen_only: bool
                        ) -> tuple[nn.Module, str | None]:
    """``(model with the metanetwork's weights, None)``; with ``seen_only`` (``checkpoint: auto``), a network
    of types the metanetwork has no encoder for comes back unchanged with the reason: ``(model, "skipped: ...")``."""
    try:
        return apply_metanet(checkpoint, model, example_inputs, seen_only=seen_only), None
    except UnseenTypesError as e:
        skipped = f"skipped: {e}"
        print(f"note: metanetwork {checkpoint} {skipped}; pruning the network's own weights "
              "(metanet.checkpoint=PATH applies one anyway)")
        return model, skipped
