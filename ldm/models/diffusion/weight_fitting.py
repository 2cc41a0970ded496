"""Fitting checkpoint tensors to a model whose shapes differ: ``make_it_fit`` and the finetune input widening.

Both rewrite a state dict before it is loaded, so the load itself stays the usual one
(:func:`ldm.checkpoint.apply_state_dict`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch

logger = logging.getLogger(__name__)


def tile_to_shape(old: torch.Tensor, new_shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """``old`` repeated cyclically along its first two axes to ``new_shape`` (``make_it_fit``).

    1-D: new[i] = old[i mod n_0]. N-D (N ≥ 2, trailing axes equal): new[i, j] = old[i mod n_0, j mod n_1] / u[j mod n_1]
    where u[k] = 1 + #{j < m_1 : j mod n_1 = k} counts the new input columns fed by old column k, plus one (so a
    weight whose input width does not change is halved, as in the original). Returns a new tensor of ``old``'s dtype.
    """
    new_shape = tuple(new_shape)
    if old.ndim != len(new_shape):
        raise ValueError(
            f"make_it_fit: a checkpoint tensor of shape {tuple(old.shape)} cannot fill {new_shape} "
            "(different number of axes)."
        )
    if len(new_shape) > 2 and tuple(old.shape[2:]) != new_shape[2:]:
        raise ValueError(
            f"make_it_fit: only the first two axes may differ, got {tuple(old.shape)} for {new_shape}."
        )
    rows = torch.arange(new_shape[0]) % old.shape[0]
    if old.ndim == 1:
        return old[rows].clone()
    cols = torch.arange(new_shape[1]) % old.shape[1]
    uses = 1 + torch.bincount(cols, minlength=old.shape[1]).to(old.dtype)
    divisor = uses[cols].reshape(1, -1, *([1] * (old.ndim - 2)))
    return old[rows][:, cols] / divisor


def make_it_fit(state_dict: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """Replace, in place, every entry of ``state_dict`` whose shape differs from ``own[key]`` by
    :func:`tile_to_shape` of it (cast to the model's dtype). ``own``: the model's parameters and buffers by name.
    Returns the keys that were refitted."""
    refitted = []
    for key, target in own.items():
        old = state_dict.get(key)
        if old is None or old.shape == target.shape:
            continue
        state_dict[key] = tile_to_shape(old.to(target.dtype), target.shape)
        refitted.append(key)
    if refitted:
        logger.info("make_it_fit: refitted %d checkpoint tensors to the model's shapes (%s)", len(refitted),
                    ", ".join(refitted[:3]) + (", ..." if len(refitted) > 3 else ""))
    return refitted


def widen_input_channels(
    state_dict: dict[str, torch.Tensor],
    own: Mapping[str, torch.Tensor],
    keys: Iterable[str],
    keep_dims: int,
) -> list[str]:
    """Finetuning with extra input channels: each of ``keys`` in ``state_dict`` becomes a zero tensor of the model's
    shape with the checkpoint's values in input channels ``[:keep_dims]`` (in place; returns the keys widened).

    Keys that the checkpoint or the model lacks (e.g. the EMA copy of a model without EMA) are left alone.
    """
    widened = []
    for key in keys:
        if key not in state_dict or key not in own:
            continue
        wide = torch.zeros_like(own[key], device="cpu")
        wide[:, :keep_dims, ...] = state_dict[key]
        state_dict[key] = wide
        widened.append(key)
        logger.info("finetune: %r keeps the checkpoint's first %d input channels, the rest start at 0", key, keep_dims)
    return widened
