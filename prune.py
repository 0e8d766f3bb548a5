"""Prune a trained network to a target and finetune it: ``python prune.py target.speedup=2.0``."""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from metaprune.cli import friendly_errors, sweep_context, to_dict


@hydra.main(version_base="1.3", config_path="configs", config_name="prune")
@friendly_errors
def main(cfg: DictConfig) -> None:
    from metaprune.logging import KeepOpen, make_logger
    from metaprune.prune.pipeline import run_prune
    from metaprune.prune.report import format_report

    c = to_dict(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)  # the job's folder; output_dir defaults to run_dir/result
    started = []

    def start_logger():  # called by the pipeline once pruning has succeeded; this function finishes the run
        started.append(make_logger(c["logger"], config=c, name=f"prune-{c['data']['name']}",
                                   **sweep_context("prune")))
        return KeepOpen(started[0])

    try:
        report = run_prune(c, logger=start_logger)
        for logger in started:  # the pruned model, as the wandb run's artifact
            logger.artifact(Path(report["output_dir"]) / "pruned", kind="model",
                            name=f"pruned-{report['model']}-{report['data']}")
    except BaseException:
        _remove_if_empty(run_dir)  # a failed run leaves nothing behind
        raise
    finally:
        for logger in started:
            logger.finish()
    print(format_report(report))


def _remove_if_empty(path: Path) -> None:
    """Remove Hydra's run directory when it holds nothing but its empty job log."""
    if not path.is_dir():
        return
    log = path / "prune.log"
    if log.is_file() and log.stat().st_size == 0:
        log.unlink()
    if not any(path.iterdir()):
        path.rmdir()


# prune.py's own presets behind keys train_meta.py also takes: key -> (its entry in prune.yaml, its folder, what the
# folder of the same name holds for train_meta.py)
PRESETS = {"metanet": ("apply_metanet@metanet", "apply_metanet", "train_meta.py's architecture presets",
                       "give metanet.checkpoint=PATH for another metanetwork"),
           "experiment": ("prune_experiment", "prune_experiment", "train_meta.py's and quality.py's experiments",
                          "prune.py's are in configs/prune_experiment/")}


def _preset_choices(argv: list[str]) -> list[str]:
    """``metanet=X`` picks how a metanetwork is applied (``configs/apply_metanet/X.yaml``) and ``experiment=X`` a
    complete prune run (``configs/prune_experiment/X.yaml``); ``configs/metanet/`` and ``configs/experiment/`` hold
    train_meta.py's presets of those names. A name that is not a prune.py preset is one clear error."""
    out = []
    for arg in argv:
        key, _, choice = arg.partition("=")
        if key in PRESETS:
            entry, folder, other, hint = PRESETS[key]
            presets = sorted(p.stem for p in (Path(__file__).parent / "configs" / folder).glob("*.yaml"))
            if not set(choice.split(",")) <= set(presets):  # one preset, or a multirun sweep over several
                print(f"error: {key}={choice} is not a prune.py preset ({', '.join(presets)}); {hint} "
                      f"(configs/{key}/ holds {other})", file=sys.stderr)
                sys.exit(2)
            arg = f"{entry}={choice}"
        out.append(arg)
    return out


if __name__ == "__main__":
    sys.argv[1:] = _preset_choices(sys.argv[1:])
    main()
