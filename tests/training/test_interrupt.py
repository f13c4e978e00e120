"""Ctrl-C handling: the first request waits for the step, a second one interrupts at once."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from realsynth.training.interrupt import StepInterrupt


def test_first_ctrl_c_is_a_request_second_interrupts_and_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with StepInterrupt() as interrupt:
        assert not interrupt.should_stop(torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGINT)
        assert interrupt.should_stop(torch.device("cpu"))
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
