"""The one training loop (zoo training, finetuning after pruning, baselines)."""
from .loop import (TrainConfig, evaluate, fit, pick_device, recalibrate_norms, ranking_scorer, recalibrated_accuracy,
                   reestimate_norms, seed_everything)
from .network import split_data_cfg, train_network

__all__ = ["TrainConfig", "fit", "evaluate", "pick_device", "seed_everything", "recalibrate_norms",
           "reestimate_norms", "recalibrated_accuracy", "ranking_scorer", "train_network", "split_data_cfg"]
