"""Resume state is validated, never trusted (issue 16 item 4).

Each case damages the ``state.pt`` of an interrupted run, or changes the run asked to continue from it, and checks
what a user sees: a ``ResumeError`` (a ``ValueError``: the CLI prints it as one ``error:`` line) naming the file
and what differs, the state byte-identical afterwards, and no metanetwork written.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metaprune import build
from metaprune.metatrain import meta_train
from metaprune.train import fit
from metaprune.train.loop import STATE, ResumeError

sys.path.insert(0, os.path.dirname(__file__))
from test_train_meta import QUICK, REPO, SMALL_NET, _tiny_zoo_dir  # noqa: E402
from test_zoo import tiny_zoo  # noqa: E402

CFG = {**QUICK, "steps": 3, "save_every": 1, "val_every": 0}


@pytest.fixture(scope="module")
def zoo():
    return tiny_zoo()


@pytest.fixture(scope="module")
def interrupted(zoo, digits, tmp_path_factory):
    """The resume directory of a meta-training run stopped after 2 of its 3 steps."""
    root = tmp_path_factory.mktemp("meta")
    part = meta_train(zoo, digits, SMALL_NET, CFG, root / "run", device="cpu", progress=False, stop_after=2)
    assert not part["finished"] and not (root / "run").exists()
    return root / ".run.resume"


def _first(state, ndim):
    return next(k for k, v in state["metanet"].items() if v.dim() == ndim)


def _nan(s):
    s["metanet"][_first(s, 2)].fill_(float("nan"))


def _reshape(s):
    s["metanet"][_first(s, 2)] = torch.zeros(3, 3)


def _to_int(s):
    k = _first(s, 2)
    s["metanet"][k] = s["metanet"][k].to(torch.int64)


def _opt_moment(s):
    s["opt"]["state"][0]["exp_avg"] = torch.zeros(2)


def _set(key, value):
    return lambda s: s.__setitem__(key, value)


def _raw(edit):
    """An edit of the file's bytes rather than of the loaded state."""
    edit.raw = True
    return edit


# (case, change to the stored state: bytes or an edit of the loaded dict, run settings, what the error names)
CASES = [
    ("nan", _nan, {}, ["NaN or Inf values in 1 tensor(s): metanet."]),
    ("truncated", _raw(lambda b: b[: len(b) // 2]), {}, ["not a resume state (truncated or corrupt: "]),
    ("empty", _raw(lambda b: b""), {}, ["not a resume state (the file is empty)"]),
    ("hidden", None, {"net": {"hidden": 16}}, ["metanet.hidden changed: state 8, this run 16",
                                              "metanet shapes differ: state has", "the run builds [16,"]),
    ("shapes", _reshape, {}, ["metanet shapes differ: state has", "[3, 3], the run builds ["]),
    ("int_weights", _to_int, {}, ["metanet dtypes differ (state vs run): ", "torch.int64 vs torch.float32"]),
    ("no_optimizer", lambda s: s.pop("opt"), {}, ["missing opt"]),
    ("opt_moment", _opt_moment, {}, ["opt state does not fit 1 parameter(s): parameter 0: exp_avg [2] vs ["]),
    ("step_1e9", _set("step", 10 ** 9), {}, ["step=1000000000 is outside [0, 3]"]),
    ("step_float", _set("step", 1e9), {}, ["step is float, expected int"]),
    ("step_negative", _set("step", -5), {}, ["step=-5 is outside [0, 3]"]),
    ("no_recipe", lambda s: s.pop("recipe"), {}, ["missing recipe"]),
    ("lr", None, {"cfg": {"lr": 1e-3}}, ["meta_optim.lr changed: state 0.003, this run 0.001"]),
    ("steps", None, {"cfg": {"steps": 5}}, ["meta_optim.steps changed: state 3, this run 5"]),
    ("seed", None, {"seed": 1}, ["seed changed: state 0, this run 1"]),
    ("batch", None, {"cfg": {"batch_size": 16}}, ["meta_optim.batch_size changed: state 32, this run 16"]),
    ("missing", "delete", {}, ["no resume state to continue from; drop resume=true to start the run afresh"]),
]


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case,change,run,names", CASES, ids=[c[0] for c in CASES])
def test_bad_resume_state_is_refused_naming_what_differs(zoo, digits, interrupted, tmp_path, case, change, run,
                                                         names):
    rdir = tmp_path / ".run.resume"
    shutil.copytree(interrupted, rdir)
    f = rdir / STATE
    if change == "delete":
        f.unlink()
    elif getattr(change, "raw", False):
        f.write_bytes(change(f.read_bytes()))
    elif change is not None:
        state = torch.load(f, weights_only=True)
        change(state)
        torch.save(state, f)
    before = _tree(tmp_path)
    with pytest.raises(ResumeError) as e:
        meta_train(zoo, digits, {**SMALL_NET, **run.get("net", {})}, {**CFG, **run.get("cfg", {})},
                   tmp_path / "run", seed=run.get("seed", 0), device="cpu", progress=False, resume=True)
    msg = str(e.value)
    assert isinstance(e.value, ValueError) and "\n" not in msg and str(f) in msg, msg
    for name in names:
        assert name in msg, msg
    assert _tree(tmp_path) == before  # the state untouched, and no metanetwork written
    assert not (tmp_path / "run").exists()


def test_the_untouched_state_resumes_and_finishes(zoo, digits, interrupted, tmp_path):
    shutil.copytree(interrupted, tmp_path / ".run.resume")
    out = meta_train(zoo, digits, SMALL_NET, {**CFG, "save_every": 2, "log_every": 5}, tmp_path / "run",
                     device="cpu", progress=False, resume=True)  # the save and log periods may change
    assert out["finished"] and out["steps"] == 3 and (tmp_path / "run" / "metanet.safetensors").is_file()


def test_cli_resume_without_state_is_one_error_line(zoo, tmp_path):
    cmd = [sys.executable, "train_meta.py", *_tiny_zoo_dir(tmp_path / "cfg"), f"out_root={tmp_path}", "name=none",
           "resume=true", "metanet.hidden=8", "metanet.layers=1", "meta_optim.steps=1"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert f"error: {tmp_path / '.none.resume' / STATE}: no resume state to continue from; drop resume=true" \
        in r.stderr
    assert not (tmp_path / "none").exists()


# fit(): a resume_dir continues when a state exists (zoo members, interrupted epochs), but only a state of this run
FIT = {"epochs": 1, "lr": 0.05, "progress": False, "seed": 0}


def _net(width=4):
    torch.manual_seed(0)
    return build("resnet", depth=8, width=width, num_classes=10, in_channels=1)


@pytest.fixture(scope="module")
def fitted(digits, tmp_path_factory):
    rdir = tmp_path_factory.mktemp("fit") / "run"
    fit(_net(), digits, FIT, resume_dir=rdir)
    return rdir


def _epoch(value):
    def change(rdir):
        state = torch.load(rdir / STATE, weights_only=True)
        state["epoch"] = value
        torch.save(state, rdir / STATE)
    return change


def _fit_nan(rdir):
    state = torch.load(rdir / STATE, weights_only=True)
    state["model"]["conv1.weight"][0, 0, 0, 0] = float("inf")
    torch.save(state, rdir / STATE)


FIT_CASES = [
    ("nan", _fit_nan, {}, 4, "NaN or Inf values in 1 tensor(s): model.conv1.weight"),
    ("lr", None, {"lr": 0.1}, 4, "lr changed: state 0.05, this run 0.1"),
    ("epochs", None, {"epochs": 2}, 4, "epochs changed: state 1, this run 2"),
    ("width", None, {}, 8, "model shapes differ: state has conv1.weight [4, 1, 3, 3], the run builds [8, 1, 3, 3]"),
    ("epoch_negative", _epoch(-5), {}, 4, "epoch=-5 is outside [0, 1]"),
]


@pytest.mark.parametrize("case,change,cfg,width,name", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_refuses_a_state_of_another_run(digits, fitted, tmp_path, case, change, cfg, width, name):
    rdir = tmp_path / "run"
    shutil.copytree(fitted, rdir)
    if change is not None:
        change(rdir)
    before = _tree(rdir)
    model = _net(width)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ResumeError, match="resume state refused") as e:
        fit(model, digits, {**FIT, **cfg}, resume_dir=rdir)
    assert name in str(e.value)
    assert _tree(rdir) == before and all(torch.equal(v, model.state_dict()[k]) for k, v in init.items())


def test_fit_without_a_state_starts_afresh(digits, tmp_path):
    history = fit(_net(), digits, FIT, resume_dir=tmp_path / "new")
    assert [h["epoch"] for h in history] == [1] and (tmp_path / "new" / STATE).is_file()


def test_a_state_left_between_atomic_renames_still_resumes(zoo, digits, interrupted, tmp_path):
    """A kill between atomic_dir's two renames leaves only ``.<name>.old``: complete, and resumed from."""
    shutil.copytree(interrupted, tmp_path / "..run.resume.old")
    out = meta_train(zoo, digits, SMALL_NET, CFG, tmp_path / "run", device="cpu", progress=False, resume=True)
    assert out["finished"] and out["steps"] == 3


KILLABLE = """
import sys
sys.path.insert(0, "tests")
from test_zoo import tiny_zoo
from metaprune.data import get_data
from metaprune.metatrain import meta_train
meta_train(tiny_zoo(), get_data("digits"), {sm}, {cfg}, {out!r}, device="cpu", progress=False, resume={resume})
"""


@pytest.mark.slow
def test_meta_training_resumes_byte_exactly_after_repeated_sigkill(zoo, digits, tmp_path):
    import signal
    import time

    cfg = {**CFG, "steps": 40}
    out, state = tmp_path / "run", tmp_path / ".run.resume" / STATE
    steps = []
    for resume in (False, True, True):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        code = KILLABLE.format(sm=SMALL_NET, cfg=cfg, out=str(out), resume=resume)
        p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        t0, seen, step = time.time(), steps[-1] if steps else 0, 0
        while p.poll() is None and time.time() - t0 < 300:  # kill once the run has saved past the last kill
            try:
                step = torch.load(state, weights_only=True)["step"] if state.is_file() else 0
            except Exception:  # caught mid-rename: read again
                step = 0
            if step > seen:
                os.kill(p.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
        rc = p.wait()
        assert rc == -signal.SIGKILL, p.stderr.read().decode()[-2000:]
        steps.append(step)
    assert 0 < steps[0] < steps[1] < steps[2] < 40  # each run resumed from the last kill and got further
    rest = meta_train(zoo, digits, SMALL_NET, cfg, out, device="cpu", progress=False, resume=True)
    full = meta_train(zoo, digits, SMALL_NET, cfg, tmp_path / "full", device="cpu", progress=False)
    assert rest["finished"] and rest["steps"] == 40
    a, b = full["metanet"].state_dict(), rest["metanet"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "metanet.safetensors").read_bytes() == (tmp_path / "full" / "metanet.safetensors").read_bytes()
