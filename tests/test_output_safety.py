"""overwrite=true replaces only a previous metaprune result: an output_dir that is, holds or lies inside an input,
that holds a user's files, that is ``.``/``/``/``$HOME``, or that lies under a regular file is refused before any
work, and every file in the way stays byte-identical."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metaprune.cli import UsageError
from metaprune.io import RESULT_MARKER, check_output_dir, save_model
from metaprune.models import build
from metaprune.prune import pipeline
from metaprune.prune.pipeline import run_prune
from metaprune.train import train_network

REPO = Path(__file__).resolve().parents[1]


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def work(tmp_path):
    """``tmp/models/resnet8`` (checkpoint), ``tmp/models/resnet8.pt`` and an unrelated ``tmp/models/keep/notes.txt``."""
    models = tmp_path / "models"
    torch.manual_seed(0)
    model = build("resnet", depth=8, width=8, num_classes=10, in_channels=1)
    save_model(model, models / "resnet8")
    torch.save(model.state_dict(), models / "resnet8.pt")
    (models / "keep").mkdir()
    (models / "keep" / "notes.txt").write_text("a user's notes\n")
    return models


def _cfg(output_dir, checkpoint, overwrite=True, **extra):
    return {"model": {"checkpoint": str(checkpoint), **extra.pop("model", {})}, "data": {"name": "digits"},
            "metanet": "none", "target": {"speedup": 1.5}, "finetune": {"epochs": 0}, "output_dir": str(output_dir),
            "device": "cpu", "latency": {"runs": 2, "warmup": 1}, "threads": 1, "overwrite": overwrite, **extra}


@pytest.fixture
def no_load(monkeypatch):
    """Refusals must come before anything is loaded: loading fails the test."""
    def load(*a, **k):
        raise AssertionError("the run loaded its input before refusing the output_dir")

    monkeypatch.setattr(pipeline, "load", load)


def _cli(script, tmp_path, *overrides):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO / script), f"hydra.run.dir={tmp_path / 'hydra'}", "logger=none", *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def _one_line_error(proc, *fragments):
    err = proc.stderr.strip()
    assert proc.returncode != 0, proc.stdout
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# --- through the real CLI -----------------------------------------------------------------------------------------

def test_prune_cli_refuses_the_parent_of_its_input_with_overwrite(tmp_path, work):
    before = _hash(work)
    proc = _cli("prune.py", tmp_path, f"model.checkpoint={work / 'resnet8'}", f"output_dir={work}", "overwrite=true")
    _one_line_error(proc, f"output_dir {work}: refused: it contains the input {work / 'resnet8'}")
    assert _hash(work) == before
    assert (work / "keep" / "notes.txt").read_text() == "a user's notes\n"
    assert not (tmp_path / "hydra").exists()


def test_train_cli_refuses_an_output_dir_under_a_file(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory\n")
    proc = _cli("train.py", tmp_path, "optim.epochs=1", f"output_dir={blocker / 'model'}")
    _one_line_error(proc, f"{blocker} is a file, not a directory")
    assert blocker.read_text() == "not a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "hydra") == ["a_file"]  # no stray result dir


def test_train_cli_refuses_a_users_directory_with_overwrite(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work\n")
    proc = _cli("train.py", tmp_path, "optim.epochs=1", f"output_dir={out}", "overwrite=true")
    _one_line_error(proc, "not a metaprune result (thesis.tex)", "overwrite=true replaces only a previous result")
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    assert (out / "thesis.tex").read_text() == "years of work\n"


# --- prune's pipeline -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where,checkpoint,fragment", [
    (lambda w: w / "resnet8", "resnet8", "it is the input"),
    (lambda w: w / "resnet8" / "sub", "resnet8", "it lies inside the input"),
    (lambda w: w / "resnet8.pt", "resnet8.pt", "it is the input"),
    (lambda w: w / "keep" / ".." / "resnet8", "resnet8", "it is the input"),  # `..` resolved
    (lambda w: w.parent / "link", "resnet8", "it contains the input"),  # a symlink to the models folder
])
def test_output_dir_that_is_holds_or_lies_in_the_input_is_refused(tmp_path, work, no_load, where, checkpoint,
                                                                   fragment):
    (tmp_path / "link").symlink_to(work)
    before = _hash(work)
    extra = {"model": {"name": "resnet", "args": {"depth": 8, "width": 8}}} if checkpoint.endswith(".pt") else {}
    with pytest.raises(UsageError, match=fragment):
        run_prune(_cfg(where(work), work / checkpoint, **extra), progress=False)
    assert _hash(work) == before


def test_onnx_input_is_protected(tmp_path, no_load):
    onnx = tmp_path / "net.onnx"
    onnx.write_bytes(b"stand-in bytes: refused before they are read")
    with pytest.raises(UsageError, match="it is the input"):
        run_prune({**_cfg(onnx, None), "model": {"onnx": str(onnx)}}, progress=False)
    assert onnx.read_bytes() == b"stand-in bytes: refused before they are read"


def test_users_directory_is_refused_even_with_overwrite(tmp_path, work, no_load):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(UsageError, match=r"holds files that are not a metaprune result \(notes\.txt\)"):
        run_prune(_cfg(out, work / "resnet8"), progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine\n"


def test_output_dir_under_a_file_is_refused_before_work(tmp_path, work, no_load):
    blocker = tmp_path / "report.txt"
    blocker.write_text("x")
    with pytest.raises(UsageError, match=f"{blocker} is a file, not a directory"):
        run_prune(_cfg(blocker / "deeper" / "out", work / "resnet8"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "report.txt"]  # no hidden result dir


def test_previous_result_is_replaced_with_overwrite_and_only_then(tmp_path, work, digits):
    out = tmp_path / "out"
    first = run_prune(_cfg(out, work / "resnet8", overwrite=False), data=digits, progress=False)
    marker = json.loads((out / RESULT_MARKER).read_text())
    assert marker["kind"] == "prune" and marker["contents"] == ["pruned", "report.json"]
    with pytest.raises(UsageError, match="already holds a run; pass overwrite=true"):
        run_prune(_cfg(out, work / "resnet8", overwrite=False), data=digits, progress=False)
    second = run_prune(_cfg(out, work / "resnet8", target={"speedup": 2.0}), data=digits, progress=False)
    report = json.loads((out / "report.json").read_text())
    assert first["speedup"] < 1.6 and report["speedup"] == second["speedup"] > 1.9
    assert sorted(p.name for p in out.iterdir()) == sorted([RESULT_MARKER, "pruned", "report.json"])
    assert not list(tmp_path.glob(".out*"))  # no temporary or old copy left beside it

    (out / "my_plot.png").write_bytes(b"added by the user after the run")
    with pytest.raises(UsageError, match=r"besides a previous metaprune result it holds my_plot\.png"):
        run_prune(_cfg(out, work / "resnet8"), data=digits, progress=False)
    assert (out / "my_plot.png").read_bytes() == b"added by the user after the run"


def test_a_result_that_holds_the_input_is_not_replaced(tmp_path, work, digits):
    """Pruning a previous result's own pruned model into that result directory would delete the input."""
    out = tmp_path / "out"
    run_prune(_cfg(out, work / "resnet8", overwrite=False), data=digits, progress=False)
    before = _hash(out)
    with pytest.raises(UsageError, match="it contains the input"):
        run_prune(_cfg(out, out / "pruned"), data=digits, progress=False)
    assert _hash(out) == before


# --- the shared check -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("place,fragment", [
    (".", "it is the current directory"),
    ("", "it is the current directory"),
    ("..", "it contains the current directory"),
    ("../..", "it is your home directory"),
    ("/", "it contains your home directory"),
    (str(REPO), "it is metaprune's own directory"),
])
def test_dangerous_places_are_refused(tmp_path, monkeypatch, place, fragment):
    home = tmp_path / "home"
    (home / "work" / "sub").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home / "work" / "sub")
    with pytest.raises(UsageError, match=fragment):
        check_output_dir(place, overwrite=True)


def test_train_network_marks_its_checkpoint_as_a_result(tmp_path, digits):
    out = tmp_path / "m"
    train_network("resnet", {"depth": 8, "width": 4}, {"name": "digits"}, {"epochs": 1}, output_dir=out, data=digits,
                  progress=False)
    marker = json.loads((out / RESULT_MARKER).read_text())
    assert marker["kind"] == "train" and marker["contents"] == ["model.safetensors", "spec.json"]
    with pytest.raises(UsageError, match="already holds a model; pass overwrite=true"):
        check_output_dir(out, overwrite=False)
    assert check_output_dir(out, overwrite=True) == out
    (out / RESULT_MARKER).write_text("not json")  # a damaged marker is no marker
    with pytest.raises(UsageError, match="not a metaprune result"):
        check_output_dir(out, overwrite=True)


def test_empty_or_absent_output_dir_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_output_dir(tmp_path / "empty", overwrite=True) == tmp_path / "empty"
    assert check_output_dir(tmp_path / "new" / "deeper", overwrite=False) == tmp_path / "new" / "deeper"
    with pytest.raises(UsageError, match="overwrite='yes' must be true or false"):
        check_output_dir(tmp_path / "new", overwrite="yes")


def test_files_that_appear_in_output_dir_during_the_run_are_not_replaced(tmp_path, work, digits):
    out = tmp_path / "out"

    def transform(model, data):  # runs after the start's check: a user (or another run) writes into output_dir
        out.mkdir()
        (out / "notes.txt").write_text("written while the run worked\n")
        return model

    with pytest.raises(UsageError, match=r"not a metaprune result \(notes\.txt\)"):
        run_prune(_cfg(out, work / "resnet8"), transform=transform, data=digits, progress=False)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "written while the run worked\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models", "out"]  # no hidden temporary left
