"""Shared test set-up: offline mode, a network guard, deterministic CPU torch, reference-data paths."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch

from tests.helpers import REFDATA

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_LOOPBACK = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect


def _guarded_connect(self: socket.socket, address) -> None:
    host = address[0] if isinstance(address, tuple) else str(address)
    if self.family in (socket.AF_INET, socket.AF_INET6) and not str(host).startswith(_LOOPBACK):
        raise RuntimeError(f"test tried to reach the network ({address!r}); tests must stay offline")
    return _real_connect(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def refdata() -> Path:
    """Folder with the original code's reference manifests, configs and vectors (see refdata/README.md)."""
    return REFDATA
