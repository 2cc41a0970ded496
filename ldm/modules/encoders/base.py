"""``AbstractEncoder``: the base class of the conditioners (kept in its own module so that every encoder module can
subclass it without importing :mod:`ldm.modules.encoders.modules`, which re-exports them)."""

from __future__ import annotations

from typing import Any

from torch import nn


class AbstractEncoder(nn.Module):
    """A conditioner; subclasses implement ``encode``."""

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class IdentityEncoder(AbstractEncoder):
    """The conditioning is the input itself: ``encode(x)`` returns ``x`` unchanged."""

    def encode(self, x: Any) -> Any:
        return x
