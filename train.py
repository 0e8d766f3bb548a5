"""Train one network: ``python train.py model=resnet20 data=digits optim.epochs=10``."""
import hydra
from omegaconf import DictConfig

from metaprune.cli import (check_device, check_int, check_logger, check_types, friendly_errors, sweep_context,
                           sweep_job_dir, to_dict)


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@friendly_errors
def main(cfg: DictConfig) -> None:
    from metaprune.io import check_output_dir
    from metaprune.logging import make_logger
    from metaprune.train import TrainConfig, train_network

    c = to_dict(cfg)
    check_int("seed", c["seed"], 0)  # every value is checked before anything is built or loaded
    check_device(c["device"])
    check_logger(c["logger"])
    check_types(TrainConfig, c["optim"], "optim.")
    TrainConfig.from_dict(c["optim"])
    job = sweep_job_dir("output_dir")
    if job is not None:  # a sweep: each job's model in its own folder, unless output_dir was given
        c["output_dir"] = str(job / f"{c['model']['name']}-{c['data']['name']}")
    out = check_output_dir(c["output_dir"], c["overwrite"], inputs=[c["data"].get("root")], kind="train")
    logger = make_logger(c["logger"], config=c, name=f"train-{c['model']['name']}", **sweep_context("train"))
    try:
        _, rec = train_network(c["model"]["name"], c["model"].get("args"), c["data"], c["optim"],
                               output_dir=out, seed=c["seed"], device=c["device"], logger=logger)
        logger.summary({k: rec[k] for k in ("val_acc", "test_acc", "macs", "params")})
        logger.artifact(out, name=f"model-{c['model']['name']}-{c['data']['name']}", kind="model")
    finally:
        logger.finish()
    print(f"{rec['model']} on {rec['data']}: val {rec['val_acc']:.2%}, test {rec['test_acc']:.2%}, "
          f"{rec['macs'] / 1e6:.2f} MMACs, {rec['params'] / 1e3:.1f}k params, {rec['train_seconds']:.1f}s -> {out}")


if __name__ == "__main__":
    main()
