"""Errors of the safe checkpoint loader, and how text that comes from a file is shown in them.

The loader's inner layers (archive reader, unpickler, allocation guard) raise the ``*Fault`` exceptions, which
carry a reason but no path; :func:`ldm.checkpoint.load_checkpoint` turns them into the public errors below with
the file's name. Everything a file controls (global names, keys, paths) is shown through :func:`shown`, so a
message is always one printable line.
"""

from __future__ import annotations

import shlex
from pathlib import Path

#: Longest piece of file-controlled text a message shows.
SHOWN_CHARS = 120


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read (corrupt, truncated, not a checkpoint, no state dict)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asks for a global outside the allow-list; nothing in it was executed.

    ``globals`` lists what it asked for; ``benign`` is True when all of it is a known legacy class that a
    trusted conversion (``--unsafe-trust-pickle``) can read.
    """

    def __init__(self, message: str, globals_: list[str], benign: bool = False):
        super().__init__(message)
        self.globals = globals_
        self.benign = benign


class CheckpointExpansionError(CheckpointError):
    """A file would make the loader hold (or a consumer walk) far more bytes than the file has."""


class CheckpointFault(Exception):
    """Inner-layer reason a file is not a readable checkpoint (no path; see the module docstring)."""


class ExpansionFault(CheckpointFault):
    """Inner-layer reason: the allocation bound was exceeded."""


class ForbiddenGlobals(CheckpointFault):
    """Inner-layer reason: the pickle asks for globals (or calls of globals) outside the allow-list."""

    def __init__(self, names: list[str], *, in_checkpoint: bool = True):
        super().__init__(", ".join(names))
        self.names = names
        self.in_checkpoint = in_checkpoint


def shown(text: object, limit: int = SHOWN_CHARS) -> str:
    """``text`` as one printable line: non-printable characters escaped, cut to ``limit`` characters."""
    try:
        value = str(text)
    except Exception:  # e.g. an int too long to print
        value = f"<{type(text).__name__}>"
    if not value.isprintable():
        value = value.encode("unicode_escape").decode("ascii")
    return value if len(value) <= limit else value[: limit - 3] + "..."


def shown_repr(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` through :func:`shown` (never raises)."""
    try:
        return shown(repr(value), limit)
    except Exception:
        return f"<{type(value).__name__}>"


def shell_word(path: str | Path) -> str | None:
    """``path`` quoted for a POSIX shell (``shlex.quote``), or None if it cannot be pasted as one line."""
    text = str(path)
    return shlex.quote(text) if text.isprintable() else None


def shown_path(path: str | Path) -> str:
    """A path for a message: shell-quoted when printable, escaped otherwise (never two lines)."""
    return shell_word(path) or shown(path, limit=4 * SHOWN_CHARS)
