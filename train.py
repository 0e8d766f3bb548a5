"""Train one network: ``python train.py model=resnet20 data=digits optim.epochs=10``."""
import hydra
from omegaconf import DictConfig

from metaprune.cli import friendly_errors, to_dict


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
@friendly_errors
def main(cfg: DictConfig) -> None:
    from pathlib import Path

    from metaprune.cli import UsageError
    from metaprune.logging import make_logger
    from metaprune.train import train_network

    c = to_dict(cfg)
    out = Path(c["output_dir"])
    if out.exists() and any(out.iterdir()) and not c["overwrite"]:
        raise UsageError(f"output_dir {out} already holds a model; pass overwrite=true to replace it")
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
