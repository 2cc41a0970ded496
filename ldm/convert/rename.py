"""Prefix rules that rename state-dict keys between two layouts, usable in both directions.

A rule ``(src_prefix, dst_prefix, suffix_renames)`` maps ``src_prefix + rest`` to ``dst_prefix + rest'`` where
``rest'`` is ``rest`` with its first matching ``(old, new)`` suffix prefix replaced; the longest matching
``src_prefix`` wins. ``invert`` swaps the two sides of every rule.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

StateDict = Mapping[str, torch.Tensor]
Renames = list[tuple[str, str]]
Rule = tuple[str, str, Renames]

def rename(key: str, prefixes: list[Rule]) -> str:
    """Rename ``key`` by the longest matching ``(src_prefix, dst_prefix, suffix_renames)`` entry."""
    best = max((p for p in prefixes if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    if best is None:
        raise ValueError(f"no conversion rule for state-dict key {key!r}; is this a Stable Diffusion v1 or 2.x model?")
    src, dst, suffixes = best
    rest = key[len(src) :]
    for old, new in suffixes:
        if rest.startswith(old):
            rest = new + rest[len(old) :]
            break
    return dst + rest


def invert(prefixes: list[Rule]) -> list[Rule]:
    """The rules of the opposite direction (``dst → src``, suffix renames swapped)."""
    return [(dst, src, [(new, old) for old, new in suffixes]) for src, dst, suffixes in prefixes]


def convert(state_dict: StateDict, prefixes: list[Rule]) -> dict[str, torch.Tensor]:
    """``state_dict`` with every key renamed by ``prefixes`` (tensors shared, not copied)."""
    return {rename(key, prefixes): value for key, value in state_dict.items()}

