"""Ctrl-C while one finished structure is being saved acts after the save, never inside it."""

import os
import signal

import pytest

from mlcharge_workflows.compare import _interrupts_deferred


@pytest.fixture
def sigint_as_at_a_terminal():
    """A background job (CI) starts with SIGINT ignored: handle it as an interactive run does."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_during_a_save_acts_after_it(sigint_as_at_a_terminal):
    steps = []
    with pytest.raises(KeyboardInterrupt):
        with _interrupts_deferred():
            steps.append("store")
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # give Python every chance to run a handler here
                steps.append("jsonl") if len(steps) == 1 else None
            steps.append("json")
    assert steps == ["store", "jsonl", "json"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_no_signal_no_interrupt_and_handlers_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with _interrupts_deferred():
        pass
    assert {s: signal.getsignal(s) for s in before} == before


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
