"""Network families by name: ``build(name, **size)``; ``tv:<name>`` for torchvision models."""
from . import cifar, dense, gnn, lm_layers, pointcloud, sequence, vit  # noqa: F401  (register the families, rules)
from .registry import UnknownModelError, available, build, build_for_data, register
from .spec import model_spec, rebuild, resize_to

__all__ = ["build", "build_for_data", "register", "available", "model_spec", "rebuild", "resize_to", "UnknownModelError"]
