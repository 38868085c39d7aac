"""Graceful stops: SIGINT (Ctrl-C), SIGTERM, SIGUSR1 and SIGUSR2 (a scheduler's preemption notice) ask a
long-running loop to stop at its next safe point instead of killing it mid-step.

    with StopSignals() as stop:
        while work_left():
            do_one_step()
            if stop.requested:
                save_and_leave(stop.requested)

A second Ctrl-C while a stop is pending raises ``KeyboardInterrupt`` at once (an impatient user is
never trapped). Outside the main thread (where Python cannot install handlers) nothing is installed
and ``requested`` stays None. The previous handlers are restored on exit.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

#: the signals that request a stop, and the exit status a stopped process reports for each
#: (SIGUSR2 is what submitit's SLURM jobs receive before their time limit)
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGUSR1", None),
                                 getattr(signal, "SIGUSR2", None)) if s is not None)


def exit_status(signum: int) -> int:
    """The conventional status of a process ended by ``signum`` (128 + its number)."""
    return 128 + int(signum)


class StopSignals:
    """Context manager turning the stop signals into a flag (``requested``: the signal's name)."""

    def __init__(self, notice: str = "stopping after the current step (Ctrl-C again aborts without saving)") -> None:
        self.notice = notice
        self.requested: str | None = None
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        self.signum = signum
        print(f"\n{self.requested}: {self.notice}", file=sys.stderr, flush=True)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def pass_on_stop_signal(signum: int, report: Callable[[], None]) -> None:
    """After a graceful stop on ``signum``: ``report()`` (print the one line), then, if a handler of the
    process's own was installed before ours for SIGTERM / SIGUSR1 / SIGUSR2 (e.g. submitit's, which requeues a
    preempted SLURM job), deliver the signal again so that it acts. ``report`` normally exits."""
    handler = signal.getsignal(signum)
    if signum == signal.SIGINT or handler in (signal.SIG_DFL, signal.SIG_IGN, None):
        report()
        return
    try:
        report()
    finally:
        os.kill(os.getpid(), signum)
