"""SIGUSR1 ("write a checkpoint now") before the trainer runs: remembered instead of killing the process.

``main.py`` installs :func:`hold_checkpoint_signal` before it imports torch, so a SIGUSR1 that arrives while the
run starts (imports, model and data set-up) does not end it with the signal's default action; the request is
kept, and :class:`ldm.callbacks.SignalCheckpoint` honours it at the first batch end. Standard library only: this
module is imported before everything else.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

CHECKPOINT_SIGNAL = signal.SIGUSR1

_requests: list[int] = []


def _remember(signum: int, frame: FrameType | None) -> None:
    _requests.append(signum)


def hold_checkpoint_signal() -> bool:
    """Catch SIGUSR1 from now on (main thread only, and only where it still has its default, fatal action);
    returns whether the handler was installed."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(CHECKPOINT_SIGNAL) is not signal.SIG_DFL:
        return False
    signal.signal(CHECKPOINT_SIGNAL, _remember)
    return True


def take_checkpoint_request() -> bool:
    """Whether a SIGUSR1 arrived while :func:`hold_checkpoint_signal`'s handler was installed (and forget it)."""
    requested = bool(_requests)
    _requests.clear()
    return requested
