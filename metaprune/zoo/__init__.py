"""Build, index and load the zoo of trained networks that the metanetwork learns from.

``build_zoo(zoo_cfg, data_cfg, optim)`` trains every member the config lists (families x architectures x seeds)
that is not already on disk with the same recipe, saves each as a safe checkpoint (``save_model``) with its
spec, val/test accuracy, MACs and params, and keeps ``index.json`` up to date after every member, so an
interrupted build resumes without retraining finished members. Members are split into ``train`` / ``val`` /
``heldout`` by network (never by data); whole families can be held out. The split is recorded in the index.
"""
from .core import SPLITS, Zoo, build_zoo, load_zoo, member_name, plan_members, split_members

__all__ = ["Zoo", "build_zoo", "load_zoo", "plan_members", "split_members", "member_name", "SPLITS"]
