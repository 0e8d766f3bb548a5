"""Train one network: ``python train.py model=resnet20 data=digits optim.epochs=10``."""
import hydra
from omegaconf import DictConfig

from metaprune.cli import check_device, check_int, check_logger, check_types, friendly_errors, to_dict


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
    out = check_output_dir(c["output_dir"], c["overwrite"], inputs=[c["data"].get("root")], kind="train")
    logger = make_logger(c["logger"], config=c, name=f"train-{c['model']['name']}")
    try:
        _, rec = train_network(c["model"]["name"], c["model"].get("args"), c["data"], c["optim"],
                               output_dir=out, seed=c["seed"], device=c["device"], logger=logger)
        logger.summary({k: rec[k] for k in ("val_acc", "test_acc", "macs", "params")})
    finally:
        logger.finish()
    print(f"{rec['model']} on {rec['data']}: val {rec['val_acc']:.2%}, test {rec['test_acc']:.2%}, "
          f"{rec['macs'] / 1e6:.2f} MMACs, {rec['params'] / 1e3:.1f}k params, {rec['train_seconds']:.1f}s -> {out}")


if __name__ == "__main__":
    main()
