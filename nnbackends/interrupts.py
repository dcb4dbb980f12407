"""Ctrl-C during training: finish the current step, then stop."""
from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def deferred_interrupt():
    """Turn Ctrl-C into a flag checked between steps, so a step is never half applied.

    Yields a function that tells whether Ctrl-C was pressed; a second Ctrl-C
    raises ``KeyboardInterrupt`` at once. Only the main thread can own SIGINT;
    elsewhere the flag is never set.
    """
    hit = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum, frame):
        if hit:  # a second Ctrl-C means: stop now
            raise KeyboardInterrupt
        hit.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(hit)
    finally:
        signal.signal(signal.SIGINT, previous)
