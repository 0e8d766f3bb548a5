"""Safe checkpoints: ``model.safetensors`` + ``spec.json`` in one directory, written atomically.

Loading never unpickles code: weights come from safetensors, and legacy ``.pt``/``.pth`` state dicts
are read only through ``torch.load(weights_only=True)``. A directory is written under a temporary
name and renamed into place, so an interrupted run never leaves a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .models.spec import check_spec, model_spec, rebuild
from .utils import UsageError, __version__

WEIGHTS = "model.safetensors"
SPEC = "spec.json"


# Bounds on what a user's file may make us read: checked with stat() before a byte is read or parsed.
MAX_JSON_BYTES = 64 << 20  # spec.json (an imported ONNX model keeps its compressed graph there), index.json
MAX_CONFIG_BYTES = 1 << 20  # a metanetwork's config.json
MAX_WEIGHTS_BYTES = 64 << 30  # model.safetensors, .pt/.pth state dicts


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not fit its architecture."""


def check_file(path: str | os.PathLike, limit: int, what: str = "file") -> Path:
    """``path`` if it is a regular file of at most ``limit`` bytes; else a ``CheckpointError``.

    Only ``stat`` is used: a FIFO (whose open would block) or a device such as ``/dev/zero`` is refused
    without being opened."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket")
        raise CheckpointError(f"{path}: refused: {what} is {kind}, not a regular file")
    if st.st_size > limit:
        raise CheckpointError(f"{path}: refused: {what} is {st.st_size:,} bytes, over the {limit:,}-byte limit")
    return path


def read_json(path: str | os.PathLike, limit: int = MAX_JSON_BYTES, what: str = "JSON file"):
    """Parse a user's JSON file with bounded reads (see ``check_file``); errors name the file."""
    path = check_file(path, limit, what)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # the file may have grown since stat()
        if len(data) > limit:
            raise CheckpointError(f"{path}: refused: {what} is over the {limit:,}-byte limit")
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a valid {what} ({type(e).__name__}: {e})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read {what} ({e.strerror})") from None


def read_safetensors(path: str | os.PathLike, device="cpu", limit: int = MAX_WEIGHTS_BYTES) -> dict[str, torch.Tensor]:
    """A safetensors file as name -> tensor: regular file within ``limit``, readable, every value finite."""
    path = check_file(path, limit, "weights file")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    check_finite(state, path)
    return state


def atomic_write_file(path: str | os.PathLike, write, suffix: str = ".tmp") -> Path:
    """``write(tmp)`` a file next to ``path``, then rename it into place: readers see the old file or the whole
    new one, never half of it; a failing ``write`` leaves nothing behind. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write_file(path, write)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_tensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Atomically write a name->tensor dict as safetensors (shared storage is cloned apart)."""
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    atomic_write_file(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


# A directory metaprune wrote as a run's result carries this file (JSON: kind, version, time, contents);
# ``overwrite=true`` replaces only such a directory, so it can never delete a user's own files.
RESULT_MARKER = ".metaprune-result"
MAX_MARKER_BYTES = 64 << 10


def write_result_marker(directory: str | os.PathLike, kind: str) -> None:
    """Mark ``directory`` (filled, not yet renamed into place) as a metaprune ``kind`` result listing its entries."""
    directory = Path(directory)
    contents = sorted(p.name for p in directory.iterdir() if p.name != RESULT_MARKER)
    atomic_write_json(directory / RESULT_MARKER, {"kind": kind, "version": __version__, "contents": contents,
                                                  "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def _result_marker(directory: Path) -> dict | None:
    """The marker of a previous metaprune result in ``directory`` (its own, not a subdirectory's), else None."""
    marker = directory / RESULT_MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        data = read_json(marker, MAX_MARKER_BYTES, "result marker")
    except CheckpointError:
        return None
    ok = isinstance(data, dict) and isinstance(data.get("kind"), str) and isinstance(data.get("contents"), list)
    return data if ok else None


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output_dir(path: str | os.PathLike, overwrite: bool, inputs=(), kind: str = "result") -> Path:
    """Refuse, before any work, an ``output_dir`` whose replacement could destroy anything but a previous result.

    Refused: a path under a regular file; one that is, contains or lies inside an input (``inputs``: checkpoint
    directory, state dict, ONNX file, data root; symlinks and ``..`` resolved); one that is or contains the
    current directory, the home directory or metaprune's own repository (``.``, ``/``, ``$HOME``); a non-empty
    directory without ``overwrite``; and, even with ``overwrite``, one holding anything but a previous metaprune
    result (its ``RESULT_MARKER`` and the entries the marker lists). Returns ``path`` as a ``Path``."""
    if overwrite not in (True, False):
        raise UsageError(f"overwrite={overwrite!r} must be true or false")
    out = Path(path)
    real = Path(os.path.realpath(out))
    for inp in inputs:
        if inp is None or str(inp) == "":
            continue
        src = Path(os.path.realpath(inp))
        if _is_within(src, real):
            what = "is" if src == real else "contains"
            raise UsageError(f"output_dir {out}: refused: it {what} the input {inp}; writing there would "
                             "destroy it. Give another output_dir")
        if src.is_dir() and _is_within(real, src):
            raise UsageError(f"output_dir {out}: refused: it lies inside the input {inp}; give an output_dir "
                             "outside it")
    repo = Path(__file__).resolve().parents[1]
    for place, name in ((Path.home().resolve(), "your home directory"), (repo, "metaprune's own directory"),
                        (Path.cwd().resolve(), "the current directory")):
        if _is_within(place, real):
            what = "is" if place == real else "contains"
            raise UsageError(f"output_dir {out}: refused: it {what} {name} ({place}); give a directory of its own "
                             "for the result")
    above = real
    while not os.path.lexists(above) and above != above.parent:
        above = above.parent
    if above != real and not above.is_dir():
        raise UsageError(f"output_dir {out}: refused: {above} is a file, not a directory")
    if not real.exists():
        if not os.access(above, os.W_OK | os.X_OK):
            raise UsageError(f"output_dir {out}: cannot create it: {above} is not writable")
        return out
    if not real.is_dir():
        raise UsageError(f"output_dir {out} is a file; give a directory")
    entries = sorted(p.name for p in real.iterdir())
    if not entries:
        return out
    marker = _result_marker(real)
    if marker is None:
        shown = ", ".join(entries[:3]) + (" ..." if len(entries) > 3 else "")
        raise UsageError(f"output_dir {out}: refused: it holds files that are not a metaprune result ({shown}); "
                         f"overwrite=true replaces only a previous result (marked by {RESULT_MARKER}). Give a new "
                         "or empty directory")
    if not overwrite:
        held = "a run" if marker["kind"] == "prune" else "a model" if marker["kind"] == "train" else "a result"
        raise UsageError(f"output_dir {out} already holds {held}; pass overwrite=true to replace it")
    extra = sorted(set(entries) - set(marker["contents"]) - {RESULT_MARKER})
    if extra:
        raise UsageError(f"output_dir {out}: refused: besides a previous metaprune result it holds "
                         f"{', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}, which overwrite=true would "
                         "delete; move it or give another output_dir")
    return out


def atomic_dir(target: str | os.PathLike):
    """Context manager yielding a temp directory that replaces ``target`` when the block succeeds."""
    return _AtomicDir(Path(target))


class _AtomicDir:
    def __init__(self, target: Path):
        self.target = target

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.target.parent, prefix=f".{self.target.name}."))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a checkpoint should get normal permissions
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def save_model(model: nn.Module, path: str | os.PathLike, extra: dict | None = None, marker: str | None = None) -> Path:
    """Write ``model`` to directory ``path`` as ``model.safetensors`` + ``spec.json``.

    ``extra`` (JSON-serialisable: accuracy, MACs, training config...) is stored in the spec. ``marker``: the kind
    of run result this directory is (``train``), recorded in its ``RESULT_MARKER`` (see ``check_output_dir``).
    """
    spec = model_spec(model)
    if extra:
        spec["extra"] = {**spec.get("extra", {}), **extra}
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_tensors(model.state_dict(), tmp / WEIGHTS)
        atomic_write_json(tmp / SPEC, spec)
        if marker:
            write_result_marker(tmp, marker)
    return path


def read_spec(path: str | os.PathLike) -> dict:
    path = Path(path)
    spec_file = path / SPEC if path.is_dir() else path
    if not os.path.lexists(spec_file):
        raise CheckpointError(f"{path}: no {SPEC} found; a metaprune checkpoint is a directory with {WEIGHTS} and {SPEC}")
    spec = read_json(spec_file, MAX_JSON_BYTES, "spec file")
    if not isinstance(spec, dict) or "name" not in spec:
        raise CheckpointError(f"{spec_file}: spec has no model 'name'")
    return spec


def check_finite(state: dict[str, torch.Tensor], source) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: NaN or Inf values in {len(bad)} tensor(s): {', '.join(bad[:5])}")


def _first(items: list, n: int) -> str:
    return f"{items[:n]}{' ...' if len(items) > n else ''}"


def state_dict_diff(saved: dict, own: dict, cast_ok=None) -> dict[str, list[str]]:
    """Keys where the state dict ``saved`` differs from ``own``: ``missing``, ``unexpected``, ``shape`` and ``dtype``
    (a dtype pair passes when ``cast_ok(saved_tensor, own_tensor)`` allows it)."""
    common = [k for k in own if k in saved]
    return {"missing": [k for k in own if k not in saved], "unexpected": [k for k in saved if k not in own],
            "shape": [k for k in common if tuple(saved[k].shape) != tuple(own[k].shape)],
            "dtype": [k for k in common if saved[k].dtype != own[k].dtype
                      and not (cast_ok and cast_ok(saved[k], own[k]))]}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source) -> nn.Module:
    """Load ``state`` into ``model`` strictly, naming missing, unexpected and mis-shaped keys."""
    # float -> float casts are fine; an integer or bool tensor where the model has a float one would be cast silently
    own = model.state_dict()
    d = state_dict_diff(state, own, cast_ok=lambda saved, mine: not mine.is_floating_point() or saved.is_floating_point())
    d["shape"] = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in d["shape"]]
    d["dtype"] = [f"{k} {state[k].dtype} vs {own[k].dtype}" for k in d["dtype"]]
    labels = {"missing": "missing keys", "unexpected": "unexpected keys", "shape": "shape mismatch (file vs model)",
              "dtype": "non-float weights (file vs model)"}
    parts = [f"{labels[k]} {_first(v, 5)}" for k, v in d.items() if v]
    if parts:
        raise CheckpointError(f"{source}: weights do not fit the architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)
    return model


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in directory ``path`` and load its weights; returns it in eval mode."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_file():
        raise CheckpointError(
            f"{path}: is a file; a metaprune checkpoint is a directory holding {WEIGHTS} and {SPEC} "
            "(plain state dicts load with load_state_dict_file)"
        )
    spec = read_spec(path)
    weights = path / WEIGHTS
    if not os.path.lexists(weights):
        raise CheckpointError(f"{path}: no {WEIGHTS} found")
    check_file(weights, MAX_WEIGHTS_BYTES, "weights file")
    try:
        check_spec(spec)  # attrs, downloads and the size budget: before anything is built or read
    except ValueError as e:
        raise CheckpointError(f"{path / SPEC}: {e}") from None
    except Exception as e:  # a constructor refusing the spec's argument types
        raise CheckpointError(f"{path / SPEC}: cannot rebuild model {spec.get('name')!r}: {e}") from None
    state = read_safetensors(weights, map_location)
    try:
        model = rebuild(spec, checked=True)
    except Exception as e:  # a spec naming an unknown model or bad args
        raise CheckpointError(f"{path / SPEC}: cannot rebuild model {spec.get('name')!r}: {e}") from None
    load_into(model, state, weights)
    return model.to(map_location).eval()


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a plain state dict (.safetensors, or .pt/.pth via ``weights_only=True``), never running code."""
    path = check_file(path, MAX_WEIGHTS_BYTES, "checkpoint file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    state = read_torch(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    check_finite(state, path)
    return state


def read_torch(path: str | os.PathLike, map_location="cpu", limit: int = MAX_WEIGHTS_BYTES,
               what: str = "PyTorch checkpoint"):
    """``torch.load(path, weights_only=True)`` of a bounded regular file (see ``check_file``): tensors and plain
    containers only, never code; a truncated, empty or hostile file is a ``CheckpointError`` naming it."""
    path = check_file(path, limit, what)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: not a {what} (the file is empty)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        if _pickles_code(path):
            raise CheckpointError(
                f"{path}: refused: the file holds pickled objects other than tensors, and loading it "
                "could run code. Re-save it as a plain state dict or as safetensors."
            ) from None
        raise CheckpointError(f"{path}: not a {what} (unreadable pickle data)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        why = str(e).splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__  # the first sentence
        raise CheckpointError(f"{path}: not a {what} (truncated or corrupt: {why})") from None
    except Exception as e:  # the weights-only unpickler fails in many ways on arbitrary bytes
        raise CheckpointError(f"{path}: not a {what} ({type(e).__name__})") from None


def _pickles_code(path: Path) -> bool:
    """True when the file (or a torch zip archive's data.pkl) references globals: inspected, never run."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.endswith("data.pkl")]
                return bool(names) and _has_globals(z.read(names[0]), pickletools)
        return _has_globals(path.read_bytes(), pickletools)
    except Exception:
        return False


def _has_globals(data: bytes, pickletools) -> bool:
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    return bool(ops & {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE"})

