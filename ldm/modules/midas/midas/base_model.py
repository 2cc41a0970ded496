"""``BaseModel``: a MiDaS network that reads its weights from a local file, safely."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ldm.checkpoint import load_checkpoint, state_dict_of


class BaseModel(nn.Module):
    """``nn.Module`` plus :meth:`load` (the MiDaS networks' common base)."""

    def load(self, path: str | Path) -> None:
        """Load every weight from ``path``, strictly.

        The file is a state dict (``.pt``/``.pth`` pickle or ``.safetensors``), a Lightning-style checkpoint with
        ``state_dict``, or a training checkpoint ``{"model": state dict, "optimizer": ...}``. It is read with the
        project's safe loader (no pickled code runs) on the CPU.
        """
        checkpoint = load_checkpoint(path)
        if "optimizer" in checkpoint:
            checkpoint = checkpoint["model"]
        self.load_state_dict(state_dict_of(checkpoint, path), strict=True)
