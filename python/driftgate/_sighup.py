"""SIGHUP while a service starts: remembered, never fatal.

A SIGHUP's default action ends the process, and the reloader's handler exists only once the
event loop runs, seconds into a start (imports, the values file, the store). `hold()`, the first
thing `driftgate serve` does, makes a SIGHUP that arrives before then a reload request kept for
the reloader: `ConfigReloader.running()` takes SIGHUP over, reloads once if one came
(`take()`), and hands it back to the hold when it ends, so a SIGHUP during shutdown is no
crash either. Standard library only: the command line holds SIGHUP before it imports anything
of the service. The flag is process-wide, as signal dispositions are."""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["hold", "holding", "restore", "take"]

_requested = threading.Event()
_holding = False


def _remember(signum: int, frame: FrameType | None) -> None:
    _requested.set()


def hold() -> bool:
    """From now on, a SIGHUP is remembered until `take()`; False where there is no SIGHUP or
    this is not the main thread (only it may set signal handlers)."""
    global _holding
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGHUP, _remember)
    _holding = True
    return True


def holding() -> bool:
    """Whether `hold()` is in force for this process (the reloader hands SIGHUP back to it)."""
    return _holding


def take() -> bool:
    """Whether a SIGHUP came since `hold()` (or the last `take()`); forgets it."""
    came = _requested.is_set()
    _requested.clear()
    return came


def restore() -> None:
    """SIGHUP back to the hold, after the reloader's own handler is removed."""
    if _holding and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, _remember)
