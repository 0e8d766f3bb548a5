"""Meta-train the metanetwork: ``python train_meta.py [experiment=resnet56_cifar10] [key=value ...]``.

Builds (or reuses) the zoo, meta-trains on its meta-train networks, keeps the metanetwork with the best
pruned accuracy on the meta-val networks (val split) and saves it to ``checkpoints/metanet/<name>/``.
Multi-GPU: ``torchrun --nproc_per_node=K train_meta.py ...``; sweeps: ``python train_meta.py -m ...`` (each job's
metanetwork in its own sweep folder unless ``out_root`` is given); returns the best meta-val pruned accuracy, the
objective of ``hparams_search=metanet_optuna``.
"""
import hydra
from omegaconf import DictConfig

from metaprune.cli import (check_device, check_int, check_logger, check_types, friendly_errors, join_submitit_tasks,
                           sweep_context, sweep_job_dir, to_dict)


@hydra.main(version_base="1.3", config_path="configs", config_name="train_meta")
@friendly_errors
def main(cfg: DictConfig) -> float | None:
    import os

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from metaprune.logging import make_logger
    from metaprune.metatrain import MetaConfig, run_meta

    c = to_dict(cfg)
    check_int("seed", c["seed"], 0)  # the values run_meta's own check (check_run_config) does not type
    check_device(c["device"])
    check_logger(c["logger"])
    check_types(MetaConfig, c["meta_optim"], "meta_optim.")
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN:  # sweep jobs must not overwrite one another's metanetwork
        job = sweep_job_dir("out_root")
        if job is not None:
            c["out_root"] = str(job)  # beside the job's log and wandb run
        else:
            c["name"] = f"{c['name']}-{hc.job.num}"
    join_submitit_tasks()  # submitit with tasks_per_node=K: the K tasks become one DDP group, as under torchrun
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 logs
    logger = make_logger(c["logger"] if rank0 else None, config=c, name=f"meta-{c['name']}",
                         **sweep_context("train_meta"))
    try:
        out = run_meta(c, logger=logger)
    finally:
        logger.finish()
    if "best" in out and out["best"]:
        b = out["best"]
        print(f"metanetwork -> {out['out_dir']} (step {b['step']}): meta-val pruned acc at "
              f"{c['meta_optim']['val_speedup']:g}x {b['pruned_acc']:.2%} vs {b['pruned_acc_base']:.2%} without it")
        return float(b["pruned_acc"])  # the sweeper's objective: meta-val networks, val split
    return None


if __name__ == "__main__":
    main()
