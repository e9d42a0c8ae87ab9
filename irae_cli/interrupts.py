"""SIGTERM stops irae as Ctrl-C does.

A scheduler's time limit (SLURM), `timeout`, torchrun stopping the other processes when one died,
and `kill` all send SIGTERM, whose default is to die on the spot: training would save nothing,
and a restore's writes in flight would lose their report lines. Raised as KeyboardInterrupt, it
takes the Ctrl-C path instead (training saves; writes finish atomically). SIGINT itself cannot be
relied on: it is ignored in jobs a script starts in the background.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def catch_sigterm():
    """Make SIGTERM raise KeyboardInterrupt; returns what to hand to ``release_sigterm``.

    Only the main thread may install handlers: elsewhere (a library caller's worker thread) this
    does nothing and returns None.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    return signal.SIG_DFL if previous is None else previous  # None: a handler Python did not install


def release_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM over a few lines that must not be cut in two, and raise after them.

    A KeyboardInterrupt lands between any two bytecodes: between marking a file reported and writing its
    line (the line is lost), or between handing a write to a thread and queueing its future (the file is
    written but never reported). Off the main thread signals never arrive, and nothing is held.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum, frame) -> None:
        caught.append(signum)

    before = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        # a signal the process ignored before (a job started in the background ignores SIGINT) stays ignored
        if any(before[s] is not signal.SIG_IGN for s in caught):
            raise KeyboardInterrupt
