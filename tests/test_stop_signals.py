"""Stop signals: a flag at the next safe point, handlers restored, and a scheduler's own handler
(e.g. submitit's requeue on SIGUSR1) still acts after the graceful stop."""
from __future__ import annotations

import os
import signal
import time

import pytest

from lifelong.stop_signals import StopSignals, exit_status, pass_on_stop_signal


def _deliver(signum: int) -> None:
    os.kill(os.getpid(), signum)
    time.sleep(0.01)  # Python runs the handler at the next bytecode boundary of the main thread


def test_a_stop_signal_becomes_a_flag_and_the_previous_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        assert stop.requested is None
        _deliver(signal.SIGTERM)
        assert stop.requested == "SIGTERM" and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before
    assert exit_status(signal.SIGTERM) == 143


def test_a_second_ctrl_c_aborts_at_once():
    with StopSignals() as stop:
        _deliver(signal.SIGINT)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            _deliver(signal.SIGINT)


def test_a_handler_installed_before_ours_receives_the_signal_after_the_report():
    seen: list[str] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: seen.append("requeue"))
    try:
        with pytest.raises(SystemExit):
            pass_on_stop_signal(signal.SIGUSR1, lambda: (seen.append("report"), exec("raise SystemExit(138)")))
        time.sleep(0.01)
        assert seen == ["report", "requeue"]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_with_the_default_handler_only_the_report_runs():
    seen: list[str] = []
    pass_on_stop_signal(signal.SIGTERM, lambda: seen.append("report"))  # default handler: not re-delivered
    assert seen == ["report"]
