"""The size budget a network described by a user's file must fit before anything real is allocated.

``check_budget(construct, what, args)`` runs the constructor on PyTorch's ``meta`` device (shapes only, no
memory) while counting every tensor it creates, and stops it as soon as the count or the total number of
elements passes the budget: a spec asking for depth 999,998 or width 4,000 is refused in a fraction of a
second, naming the argument(s) that make it large and the size reached.
"""
from __future__ import annotations

import inspect

import torch
from torch.overrides import TorchFunctionMode

MAX_PARAMS = 2_000_000_000  # parameters + buffers (elements); ViT-H/14 has 0.63e9
MAX_TENSORS = 4_000  # parameter and buffer tensors; torchvision's largest (EfficientNetV2-L) has 1,548

_FACTORIES = {"empty", "zeros", "ones", "full", "rand", "randn", "randint", "tensor", "as_tensor", "arange",
              "empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like", "eye", "linspace"}


class OverBudgetError(ValueError):
    """A network (or metanetwork) larger than the stated parameter budget."""


class _Stop(BaseException):  # not an Exception: a constructor's own ``except Exception`` cannot swallow it
    pass


class _Count(TorchFunctionMode):
    """Counts the tensors (and their elements) that factory functions create; stops past the budget."""

    def __init__(self, max_params: int, max_tensors: int):
        super().__init__()
        self.max_params, self.max_tensors, self.tensors, self.numel = max_params, max_tensors, 0, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and getattr(func, "__name__", "") in _FACTORIES:
            self.tensors += 1
            self.numel += out.numel()
            if self.numel > self.max_params or self.tensors > self.max_tensors:
                raise _Stop
        return out


def _suspects(construct, args: dict) -> list[str]:
    """The numeric arguments above their constructor default; all numeric ones when none has a default."""
    try:
        params = inspect.signature(construct).parameters
    except (TypeError, ValueError):
        params = {}

    def size(v) -> float:  # a number, or the sum of a list of numbers (densenet blocks, dgcnn widths)
        if isinstance(v, bool):
            return 0
        if isinstance(v, (int, float)):
            return v
        return sum(size(x) for x in v) if isinstance(v, (list, tuple)) else 0

    numeric = [k for k, v in args.items() if size(v) > 0]
    defaults = {k: params[k].default for k in numeric if k in params and params[k].default is not inspect.Parameter.empty}
    above = [k for k in numeric if k in defaults and size(args[k]) > size(defaults[k])]
    return above or numeric


def check_budget(construct, args: dict, what: str, max_params: int | None = None, max_tensors: int | None = None):
    """Run ``construct(**args)`` on the meta device and raise ``OverBudgetError`` if it would be too large.

    Returns the number of elements (parameters + buffers) the constructor creates. Errors the constructor
    raises for bad arguments propagate unchanged."""
    max_params = MAX_PARAMS if max_params is None else max_params
    max_tensors = MAX_TENSORS if max_tensors is None else max_tensors
    count = _Count(max_params, max_tensors)
    try:
        with torch.device("meta"), count:
            construct(**args)
    except _Stop:
        keys = _suspects(construct, args)
        named = ", ".join(f"{k}={args[k]!r}" for k in keys) if keys else \
            ", ".join(f"{k}={v!r}" for k, v in args.items() if not isinstance(v, str)) or "its arguments"
        reached = (f"over {max_params:,} parameters (budget)" if count.numel > max_params else
                   f"over {max_tensors:,} parameter tensors (budget; at least {count.numel:,} parameters)")
        raise OverBudgetError(f"{what} with {named} is too large: estimated {reached}; "
                              f"refused before allocating anything") from None
    except (NotImplementedError, RuntimeError):
        pass  # a constructor that computes on its tensors cannot run on meta; it stayed within budget so far
    return count.numel
