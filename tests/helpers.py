"""Helpers the tests share: reading the reference manifests."""

from __future__ import annotations

from pathlib import Path

import torch

REFDATA = Path(__file__).parent / "refdata"


def load_manifest(name: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """``refdata/manifests/<name>`` as ``{key: (shape, dtype)}``."""
    entries = {}
    for line in (REFDATA / "manifests" / name).read_text().splitlines():
        key, shape, dtype = line.split("\t")
        entries[key] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return entries


def state_dict_manifest(module: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    """A module's state dict in the manifest form ``{key: (shape, dtype without 'torch.')}``."""
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}
