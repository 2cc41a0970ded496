"""Helpers the tests share: reading the reference manifests."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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


class RecordShapes(TorchDispatchMode):
    """Records the name and output shapes of every aten op run inside the context."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, list[tuple[int, ...]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.ops.append((str(func), [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]))
        return out

    def square_tensors(self, n: int, m: int, copies: int = 1) -> list[str]:
        """Ops that produced a tensor of shape ``(..., n, m)`` holding at least ``copies`` such matrices
        (batch × heads for attention weights)."""
        return [
            name
            for name, shapes in self.ops
            if any(s[-2:] == (n, m) and math.prod(s[:-2]) >= copies for s in shapes if len(s) >= 2)
        ]
