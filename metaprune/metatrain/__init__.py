"""Meta-training: the loop that teaches the metanetwork (``loop``) and the whole run ``train_meta.py`` calls
(``run``). Its objective terms are ``metaprune.train.objectives``."""
from .loop import MetaConfig, NetCase, meta_train, prepare, pruned_accuracy, recover, validate
from .run import check_run_config, run_meta

__all__ = ["MetaConfig", "NetCase", "meta_train", "prepare", "pruned_accuracy", "recover", "validate", "check_run_config",
           "run_meta"]
