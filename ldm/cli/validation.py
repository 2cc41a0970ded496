"""Checks of command-line input by declared kind: numbers by range (argparse ``type=`` callables), paths by kind
(file, folder, writable folder), and a parser whose errors are one line.

Each check raises with a message that names the value, what was expected and a value that works; argparse adds
``argument --flag:`` in front of a ``type=`` callable's message.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (``prog: error: ... (see --help)``), exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def _bounds_text(low: float | None, high: float | None, whole: bool) -> str:
    kind = "a whole number" if whole else "a finite number"
    if low is not None and high is not None:
        return f"{kind} from {low:g} to {high:g}"
    if low is not None:
        return f"{kind} >= {low:g}"
    if high is not None:
        return f"{kind} <= {high:g}"
    return kind


def int_in(low: int | None = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: a whole number in ``[low, high]`` (None: unbounded on that side)."""
    wanted = _bounds_text(low, high, whole=True)

    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            example = low if low is not None else high
            raise argparse.ArgumentTypeError(f"{value} is out of range: expected {wanted} (e.g. {example})")
        return value

    parse.__name__ = f"int_in({low}, {high})"
    return parse


def float_in(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite float (no nan, no inf) in ``[low, high]`` (None: unbounded)."""
    wanted = _bounds_text(low, high, whole=False)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{text!r} is not {wanted}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not finite: expected {wanted}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: expected {wanted}")
        return value

    parse.__name__ = f"float_in({low}, {high})"
    return parse


def require_file(path: str | os.PathLike, flag: str, what: str = "file") -> Path:
    """``path`` if it is a readable file; else ``FileNotFoundError`` / ``IsADirectoryError`` / ``PermissionError``
    naming ``what``, the path and the ``flag`` it came from."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {path} (from {flag}) is a directory; pass the file itself")
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (from {flag}); check the path")
    if not path.is_file():
        raise ValueError(f"{what} {path} (from {flag}) is not a regular file; pass a file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{what} {path} (from {flag}) is not readable; check its permissions")
    return path


def require_dir(path: str | os.PathLike, flag: str, what: str = "folder") -> Path:
    """``path`` if it is a folder; else ``FileNotFoundError`` / ``NotADirectoryError`` naming it."""
    path = Path(path)
    if path.is_file():
        raise NotADirectoryError(f"{what} {path} (from {flag}) is a file, not a folder; pass a folder")
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} (from {flag}); check the path")
    return path


def require_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """``path`` if it is, or can be created as, a folder we may write in (checked on its nearest existing
    ancestor); else ``NotADirectoryError`` / ``PermissionError`` naming it and the flag."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"output folder {path} (from {flag}): {existing} is a file, not a folder; "
                                 "choose another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"output folder {path} (from {flag}): {existing} is not writable; choose a folder "
                              "you can write to")
    return path
