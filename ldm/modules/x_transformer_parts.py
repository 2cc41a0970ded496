"""The small pieces the original ``ldm.modules.x_transformer`` (a copy of the x-transformers library) exposed beside
its encoder: predicates and keyword-grouping helpers, the norm / residual / gating blocks and the sinusoidal
positions. ``AttentionLayers`` (:mod:`ldm.modules.x_transformer_layers`) builds its stacks from them; all are
re-exported from ``ldm.modules.x_transformer``.
"""

from __future__ import annotations

import inspect
from collections import namedtuple
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import torch
from einops import rearrange
from torch import nn

#: Channels per attention head unless ``attn_dim_head`` says otherwise.
DEFAULT_DIM_HEAD = 64

#: Attention maps before and after the softmax, and a layer stack's hidden states plus those maps.
Intermediates = namedtuple("Intermediates", ["pre_softmax_attn", "post_softmax_attn"])
LayerIntermediates = namedtuple("Intermediates", ["hiddens", "attn_intermediates"])


# ---- predicates and keyword grouping ------------------------------------------------------------------------


def exists(val: Any) -> bool:
    """``val is not None``."""
    return val is not None


def default(val: Any, d: Any) -> Any:
    """``val`` unless it is None; then ``d``, called first when it is a function."""
    if val is not None:
        return val
    return d() if inspect.isfunction(d) else d


class always:  # noqa: N801 (the original's name)
    """A callable that ignores its arguments and returns ``val``."""

    def __init__(self, val: Any) -> None:
        self.val = val

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.val


class equals:  # noqa: N801 (the original's name)
    """``equals(v)(x)`` is ``x == v``."""

    def __init__(self, val: Any) -> None:
        self.val = val

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x == self.val


class not_equals:  # noqa: N801 (the original's name)
    """``not_equals(v)(x)`` is ``x != v``."""

    def __init__(self, val: Any) -> None:
        self.val = val

    def __call__(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x != self.val


def max_neg_value(tensor: torch.Tensor) -> float:
    """The most negative finite value of ``tensor``'s dtype (a mask fill that survives the softmax)."""
    return -torch.finfo(tensor.dtype).max


def pick_and_pop(keys: Iterable[str], d: dict) -> dict:
    """Remove ``keys`` from ``d`` and return them with their values, in the order of ``keys``."""
    return {key: d.pop(key) for key in list(keys)}


def group_dict_by_key(cond: Callable[[str], Any], d: Mapping) -> tuple[dict, dict]:
    """``(entries whose key satisfies cond, the others)``, each in ``d``'s order."""
    chosen, rest = {}, {}
    for key, value in d.items():
        (chosen if cond(key) else rest)[key] = value
    return chosen, rest


def string_begins_with(prefix: str, str: str) -> bool:  # noqa: A002 (the original's parameter name)
    """``str.startswith(prefix)``."""
    return str.startswith(prefix)


def group_by_key_prefix(prefix: str, d: Mapping) -> tuple[dict, dict]:
    """``(entries whose key starts with prefix, the others)``."""
    return group_dict_by_key(partial(string_begins_with, prefix), d)


def groupby_prefix_and_trim(prefix: str, d: Mapping) -> tuple[dict, dict]:
    """Like :func:`group_by_key_prefix`, with ``prefix`` cut off the chosen keys (``attn_dropout`` → ``dropout``)."""
    chosen, rest = group_by_key_prefix(prefix, d)
    return {key[len(prefix) :]: value for key, value in chosen.items()}, rest


# ---- blocks -------------------------------------------------------------------------------------------------


class FixedPositionalEmbedding(nn.Module):
    """Sinusoidal positions ``(1, N, dim)``: [sin(p·ω_k), cos(p·ω_k)] with ω_k = 10000^(−2k/dim), p = offset + index
    along ``seq_dim``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        frequencies = torch.reciprocal(10000.0 ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", frequencies)

    def forward(self, x: torch.Tensor, seq_dim: int = 1, offset: int = 0) -> torch.Tensor:
        positions = torch.arange(x.shape[seq_dim], device=x.device).type_as(self.inv_freq) + offset
        angles = positions[:, None] * self.inv_freq[None, :]
        return torch.cat((angles.sin(), angles.cos()), dim=-1)[None]


class Scale(nn.Module):
    """``value · fn(x)``: a tensor output is scaled; of a tuple output (attention's ``(out, maps)``) the first item.

    The macaron feed-forward (``AttentionLayers(macaron=True)``) is ``Scale(0.5, FeedForward)``; the original
    unpacked the feed-forward's tensor as if it were a tuple and failed, a tensor is scaled here.
    """

    def __init__(self, value: float, fn: nn.Module) -> None:
        super().__init__()
        self.value, self.fn = value, fn

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor | tuple:
        result = self.fn(x, **kwargs)
        if isinstance(result, torch.Tensor):
            return result * self.value
        first, *others = result
        return (first * self.value, *others)


class Rezero(nn.Module):
    """``fn``'s first output times a learned gate ``g`` that starts at 0 (ReZero, Bachlechner et al. 2020)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.g = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, **kwargs: Any) -> tuple:
        first, *others = self.fn(x, **kwargs)
        return (first * self.g, *others)


class ScaleNorm(nn.Module):
    """x / max(‖x‖ / √dim, eps) · g with one learned scalar g."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale, self.eps = dim**-0.5, eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.norm(dim=-1, keepdim=True) * self.scale
        return x / rms.clamp(min=self.eps) * self.g


class RMSNorm(nn.Module):
    """x / max(‖x‖ / √dim, eps) · g with a learned gain per channel g ``(dim,)``."""

    def __init__(self, dim: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.scale, self.eps = dim**-0.5, eps
        self.g = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.norm(dim=-1, keepdim=True) * self.scale
        return x / rms.clamp(min=self.eps) * self.g


class Residual(nn.Module):
    """``x + residual``."""

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return x + residual


class GRUGating(nn.Module):
    """A GRU cell per token mixes the block output ``x`` (input) into the ``residual`` (hidden state)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gru = nn.GRUCell(dim, dim)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        tokens = rearrange(x, "b n d -> (b n) d")
        state = rearrange(residual, "b n d -> (b n) d")
        return self.gru(tokens, state).reshape_as(x)
