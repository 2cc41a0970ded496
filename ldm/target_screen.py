"""The hook through which :mod:`ldm.config_trust` screens what :func:`ldm.util.get_obj_from_str` resolves.

``ldm.config_trust`` registers itself here when it is imported; ``ldm.util`` only reads this module, so the two
never import each other. Until ``config_trust`` is imported no config can be marked untrusted, so an empty hook
means "trusted".
"""

from __future__ import annotations

from typing import Any, Protocol


class Screener(Protocol):
    def untrusted_source(self) -> str | None: ...

    def screen_target(self, target: Any, source: str, key: str | None = None) -> str: ...

    def screen_class(self, target: str, obj: Any, source: str, key: str | None = None) -> None: ...


#: The registered screener (the ``ldm.config_trust`` module), or None before it is imported.
screener: Screener | None = None


def register(module: Screener) -> None:
    """Make ``module`` screen every target resolved while it reports an untrusted source."""
    global screener
    screener = module
