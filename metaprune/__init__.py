"""metaprune: structural pruning with a learned metanetwork, DepGraph grouping and safe checkpoints.

Everything is callable from Python with plain arguments; the Hydra entry points only compose configs.
"""
import warnings

# torch-geometric calls torch.jit.script at import, which torch 2.14 deprecates: not the user's concern
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

from .io import CheckpointError, load_model, load_state_dict_file, save_model
from .models import build
from .utils import __version__
__all__ = ["build", "load_model", "save_model", "load_state_dict_file", "CheckpointError", "prune_checkpoint",
           "__version__"]


def __getattr__(name):
    if name == "prune_checkpoint":  # imported on first use: ``import metaprune`` stays light
        from .prune.pipeline import prune_checkpoint

        return prune_checkpoint
    raise AttributeError(f"module 'metaprune' has no attribute {name!r}")
