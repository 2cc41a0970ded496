"""The one mechanism that puts fast inference modules in place of reference ones, and the capability checks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

#: ``make(child) -> replacement or None``: the replacement for a child module, or None to leave it (and recurse).
Replacement = Callable[[nn.Module], "nn.Module | None"]


def replace_modules(root: nn.Module, make: Replacement) -> int:
    """Swap, in place, every descendant of ``root`` for which ``make`` returns a module; returns how many.

    A replaced child is not searched further (its replacement owns what was inside). ``root`` itself is never
    replaced. The reference module is dropped, not kept beside its replacement, so the swap costs no memory
    beyond what the replacement itself holds.
    """
    swapped = 0
    for name, child in list(root.named_children()):
        replacement = make(child)
        if replacement is None:
            swapped += replace_modules(child, make)
        else:
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
