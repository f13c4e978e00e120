"""Ctrl-C that never leaves a half-done step: stop after the step, save, exit cleanly."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

import torch

from realsynth.utils.distributed import all_reduce_sum, get_world_size


class StepInterrupt:
    """Turns the first SIGINT into a request to stop once the current step is complete.

    A step interrupted halfway (after ``optimizer.step()``, before the step counter moves) would
    leave a checkpoint whose weights and step disagree, and the resumed run would no longer match
    the uninterrupted one. A second Ctrl-C interrupts at once. Used as a context manager; outside
    the main thread (where handlers cannot be installed) it only reports requests made through
    :meth:`request`.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StepInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(
        self, kind: type | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def request(self) -> None:
        """Ask the loop to stop after the current step (what the first Ctrl-C does)."""
        self.requested = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.request()

    def should_stop(self, device: torch.device) -> bool:
        """True when any rank was asked to stop (all ranks then stop after the same step)."""
        if get_world_size() == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        return bool(all_reduce_sum(flag).item() > 0)
