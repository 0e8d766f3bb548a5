"""Sweeps the way researchers run them: Hydra launchers (joblib here, SLURM by config), sharded zoo builds, the Optuna
search over meta-training, and one folder per sweep job holding its results and its wandb run."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, os.path.dirname(__file__))
from test_zoo import OPTIM, TINY, TINY_ROOT, tiny_zoo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENTRY_POINTS = ["train", "train_meta", "prune", "quality"]


def _env(tmp_path):
    """Offline wandb with its caches in tmp_path (artifacts are staged there), one thread per job."""
    wb = tmp_path / "wandb-home"
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1",
            "WANDB_DATA_DIR": str(wb / "data"), "WANDB_CACHE_DIR": str(wb / "cache"),
            "WANDB_CONFIG_DIR": str(wb / "config"), "PYTHONPATH": str(REPO)}


def _compose(name, overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_slurm_launcher_config_composes_for_every_entry_point(name):
    from omegaconf import OmegaConf

    cfg = _compose(name, ["hydra/launcher=slurm", "hydra.launcher.partition=a100", "hydra.launcher.gpus_per_node=4"])
    launcher = OmegaConf.to_container(cfg.hydra.launcher)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")  # the plugin's, with our settings on top
    assert launcher["partition"] == "a100" and launcher["gpus_per_node"] == 4 and launcher["timeout_min"] == 240
    assert launcher["submitit_folder"] == "${hydra.sweep.dir}/.submitit/%j"  # SLURM logs inside the sweep folder
    sweep = OmegaConf.to_container(cfg.hydra.sweep)  # one folder per sweep, one per job inside it
    assert sweep["dir"].startswith(f"multirun/{name}/") and sweep["subdir"] == "${hydra.job.num}"


@pytest.mark.slow  # ~12 s of CPU for the imports alone; the compose test above checks the same in-process
def test_slurm_config_prints_with_cfg_hydra_and_job():
    """The command line a user runs to check a cluster config before submitting."""
    out = subprocess.run([sys.executable, "prune.py", "hydra/launcher=slurm", "hydra.launcher.timeout_min=30",
                          "--cfg", "all", "--resolve"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=_env(Path("/nonexistent")))
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = yaml.safe_load(out.stdout)
    assert cfg["hydra"]["launcher"]["timeout_min"] == 30 and cfg["hydra"]["launcher"]["partition"] == "gpu"
    assert cfg["hydra"]["launcher"]["setup"] == ["export OMP_NUM_THREADS=8"]
    assert cfg["target"]["speedup"] == 2.0  # the job's own config composes alongside


def test_optuna_search_config_composes():
    from omegaconf import OmegaConf

    cfg = _compose("train_meta", ["hparams_search=metanet_optuna"])
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper)
    assert sweeper["_target_"].endswith("OptunaSweeper") and sweeper["direction"] == "maximize"
    assert {"meta_optim.lr", "metanet.hidden"} <= set(sweeper["params"]) and str(cfg.hydra.mode) == "RunMode.MULTIRUN"


def _wandb_runs(job_dir: Path) -> list[Path]:
    return sorted((job_dir / "wandb").glob("offline-run-*"))


def test_joblib_prune_sweep_keeps_results_and_runs_per_job(tmp_path):
    """Two prune.py jobs in parallel: each job folder holds its pruned model, report.json and wandb run; the runs
    share the sweep's group, say they are prune jobs, carry their overrides as tags and hold the pruned model."""
    sweep = tmp_path / "sweep-a"
    cmd = [sys.executable, "prune.py", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
           f"hydra.sweep.dir={sweep}", "target.speedup=1.5,2", "metanet=none", "finetune.epochs=0",
           "latency.runs=2", "latency.warmup=1"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    reports = {}
    for job in ("0", "1"):
        d = sweep / job
        rep = json.loads((d / "result" / "report.json").read_text())
        assert (d / "result" / "pruned" / "model.safetensors").is_file()
        reports[rep["target"]["speedup"]] = rep
        assert rep["speedup"] >= rep["target"]["speedup"] * 0.97
        runs = _wandb_runs(d)
        assert len(runs) == 1, runs
        w = rep["wandb"]  # report.json names its run, and the run lives in this job's folder
        assert Path(w["dir"]) == runs[0] and w["id"] in runs[0].name and w["mode"] == "offline"
        assert w["group"] == "sweep-a" and w["job_type"] == "prune"
        record = next(runs[0].glob("run-*.wandb")).read_bytes()
        assert f"target.speedup={rep['target']['speedup']:g}".encode() in record  # the override, as a tag
        assert b"pruned-resnet-digits" in record  # the pruned model, logged as an artifact
    assert sorted(reports) == [1.5, 2.0]
    assert reports[1.5]["wandb"]["id"] != reports[2.0]["wandb"]["id"]
    assert (sweep / "multirun.yaml").is_file() and not (REPO / "wandb").exists()


def _tiny_zoo_cfg(tmp_path, zoo_root):
    (tmp_path / "cfg" / "zoo").mkdir(parents=True, exist_ok=True)
    tiny = {**TINY, "root": str(zoo_root), "shard": 0, "num_shards": 1}
    (tmp_path / "cfg" / "zoo" / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    return [f"hydra.searchpath=[file://{tmp_path / 'cfg'}]", "zoo=tiny", *(f"optim.{k}={v}" for k, v in OPTIM.items()),
            "progress=false", "device=cpu"]


@pytest.mark.slow  # ~1.5 min of CPU: three train_meta.py processes and two joblib workers
def test_sharded_zoo_build_with_joblib_trains_each_member_once(tmp_path):
    from metaprune.zoo import plan_members

    root = tmp_path / "zoos"
    common = [*_tiny_zoo_cfg(tmp_path, root), "logger=none", "zoo_only=true", f"hydra.run.dir={tmp_path / 'run'}"]
    run = lambda *a: subprocess.run([sys.executable, "train_meta.py", *a, *common], cwd=REPO,  # noqa: E731
                                    capture_output=True, text=True, timeout=600, env=_env(tmp_path))
    names = [m["name"] for m in plan_members(TINY, OPTIM)]
    r = run("-m", "zoo.shard=0,1", "zoo.num_shards=2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert r.returncode == 0, r.stderr[-3000:]
    trained = [int(n) for n in re.findall(r"(\d+) trained", r.stdout)]
    assert len(trained) == 2 and sum(trained) == len(names), r.stdout  # the two shards split the members
    zoo_dir = root / "tiny"
    mtimes = {n: (zoo_dir / n / "model.safetensors").stat().st_mtime_ns for n in names}
    again = run()  # once, without a shard: the zoo is complete, nothing is retrained
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"{len(names)} members (0 trained, {len(names)} reused)" in again.stdout, again.stdout
    assert {n: (zoo_dir / n / "model.safetensors").stat().st_mtime_ns for n in names} == mtimes
    assert sorted(json.loads((zoo_dir / "index.json").read_text())["members"]) == sorted(names)
    # a member of shard 1 lost: shard 0 alone writes no index and names what is missing
    lost = names[1]
    for f in (zoo_dir / lost).iterdir():
        f.unlink()
    (zoo_dir / "index.json").unlink()
    partial = run("zoo.shard=0", "zoo.num_shards=2")
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert "no index written" in partial.stdout and lost in partial.stdout, partial.stdout
    assert not (zoo_dir / "index.json").exists()


@pytest.mark.slow
def test_optuna_search_over_meta_training_runs_three_logged_trials(tmp_path):
    tiny_zoo()  # the shared tiny zoo (tests/test_zoo.py), reused
    sweep = tmp_path / "search"
    cmd = [sys.executable, "train_meta.py", "hparams_search=metanet_optuna", *_tiny_zoo_cfg(tmp_path, TINY_ROOT.parent),
           "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}", "meta_optim.steps=2", "meta_optim.nets_per_step=1",
           "meta_optim.batch_size=16", "meta_optim.val_every=2", "meta_optim.warmup_steps=0"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1200, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    objectives = []
    for job in ("0", "1", "2"):
        saved = json.loads((sweep / job / "digits" / "config.json").read_text())  # each trial's metanetwork
        objectives.append(saved["best"]["pruned_acc"])  # meta-val networks, val split
        (run,) = _wandb_runs(sweep / job)  # each trial logged, in its own folder, as a train_meta job of the sweep
        record = next(run.glob("run-*.wandb")).read_bytes()
        assert b"train_meta" in record and b"search" in record and b"metanet-digits" in record
    assert best["best_value"] == pytest.approx(max(objectives))
    assert "meta_optim.lr" in best["best_params"]


def test_submitit_tasks_of_one_job_form_a_ddp_group(monkeypatch):
    """hydra/launcher=slurm with tasks_per_node=2: task 1 of the job gets torchrun's variables, so train_meta.py's
    run joins one process group (as under torchrun) instead of two unrelated runs."""
    from metaprune.cli import join_submitit_tasks

    # a private copy of the environment: what export() writes must not reach later tests' subprocesses (they
    # would wait for a DDP peer that never comes)
    monkeypatch.setattr(os, "environ", os.environ.copy())
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE"):
        os.environ.pop(k, None)
    join_submitit_tasks()  # not under submitit: nothing set
    assert "WORLD_SIZE" not in os.environ
    for k, v in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "2", "SLURM_PROCID": "1",
                 "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "gpu07",
                 "SUBMITIT_FOLDER": "/tmp"}.items():
        monkeypatch.setenv(k, v)
    join_submitit_tasks()
    assert (os.environ["WORLD_SIZE"], os.environ["RANK"], os.environ["LOCAL_RANK"]) == ("2", "1", "1")
    assert os.environ["MASTER_ADDR"] == "gpu07" and int(os.environ["MASTER_PORT"]) > 1024


def test_overrides_become_valid_wandb_tags():
    from metaprune.logging import wandb_tags

    long = "model.checkpoint=/data/" + "x" * 80
    assert wandb_tags(["seed=1", "", long, "seed=1"]) == ["seed=1", long[:64]]  # wandb refuses "" and > 64 chars


def test_logger_group_and_job_type_are_checked():
    from metaprune.cli import UsageError, check_logger

    check_logger({"kind": "wandb", "group": "ablation-lr", "job_type": None})
    with pytest.raises(UsageError, match=r"logger.group=3 must be a string or null"):
        check_logger({"kind": "wandb", "group": 3})


@pytest.mark.slow
def test_train_sweep_saves_each_model_in_its_job_folder(tmp_path):
    sweep = tmp_path / "train-sweep"
    cmd = [sys.executable, "train.py", "-m", f"hydra.sweep.dir={sweep}", "optim.epochs=1,2", "logger=wandb",
           "device=cpu"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=_env(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    for job in ("0", "1"):
        assert (sweep / job / "resnet-digits" / "model.safetensors").is_file()
        (run,) = _wandb_runs(sweep / job)
        record = next(run.glob("run-*.wandb")).read_bytes()
        assert b"train-sweep" in record and b"model-resnet-digits" in record  # the group; the model as an artifact
