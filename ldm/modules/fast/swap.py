"""The one mechanism that puts fast inference modules in place of reference ones, and the capability checks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

#: ``make(child) -> replacement, None or child``: the replacement for a child module; None to leave it and search
#: inside it; ``child`` itself to leave it and everything inside it alone.
Replacement = Callable[[nn.Module], "nn.Module | None"]


def replace_modules(root: nn.Module, make: Replacement) -> int:
    """Swap, in place, every descendant of ``root`` for which ``make`` returns a module; returns how many.

    A replaced child is not searched further (its replacement owns what was inside), nor is a child for which
    ``make`` returns the child itself. ``root`` itself is never replaced. Each reference module is dropped as soon
    as its replacement is in place, not kept beside it (nor kept alive by a list of the children), so the swap
    peaks at one module's worth of memory beyond what the replacements themselves hold.
    """
    swapped = 0
    for name in [name for name, _ in root.named_children()]:
        child = getattr(root, name)
        replacement = make(child)
        if replacement is None:
            swapped += replace_modules(child, make)
        elif replacement is not child:
            setattr(root, name, replacement)
            swapped += 1
    return swapped


def has_torch_op(namespace: str, name: str) -> bool:
    """Whether ``torch.ops.<namespace>.<name>`` exists in this torch build (private ops come and go)."""
    try:
        getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return False
    return True


def inference_only(module: nn.Module, x: torch.Tensor) -> None:
    """Raise when a fast module would run where gradients are wanted: fast modules are for sampling only."""
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())):
        raise RuntimeError(
            f"{type(module).__name__} is an inference-only fast module; run it under torch.no_grad() or train the "
            "reference model (do not call optimize_for_inference on a model you train)."
        )
