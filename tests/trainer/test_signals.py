"""The trainer's signal handling: SIGTERM cancels even when the exception it raises is swallowed on the way
(torch.compile'd frames' guard code does that), SIGUSR1 asks for a pause at the next step boundary."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch


@pytest.fixture
def signals():
    from trainer.process import Signals

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    yield Signals()
    for s, handler in saved.items():
        signal.signal(s, handler)


def _deliver(sig) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.05)  # the handler runs in the main thread between bytecodes


def test_a_swallowed_sigterm_still_stops_at_the_next_step_boundary(signals):
    from trainer.process import Cancelled

    try:
        _deliver(signal.SIGTERM)
    except BaseException:  # noqa: BLE001 - what library code in between may do
        pass
    with pytest.raises(Cancelled):
        signals.should_pause(torch.device("cpu"))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second SIGTERM kills outright


def test_sigusr1_asks_for_a_pause(signals):
    assert signals.should_pause(torch.device("cpu")) is False
    _deliver(signal.SIGUSR1)
    assert signals.should_pause(torch.device("cpu")) is True
