"""Ctrl-C and SIGTERM that never leave a half-done step: stop after the step, save, exit cleanly."""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType, TracebackType

import torch

from realsynth.utils.distributed import all_reduce_sum, get_world_size

#: The signals that stop a run after its current step: Ctrl-C, and what ``timeout``, SLURM,
#: Kubernetes and ``docker stop`` send before SIGKILL.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StepInterrupt:
    """Turns the first SIGINT or SIGTERM into a request to stop once the current step is complete.

    A step interrupted halfway (after ``optimizer.step()``, before the step counter moves) would
    leave a checkpoint whose weights and step disagree, and the resumed run would no longer match
    the uninterrupted one. A second signal interrupts at once, and so does the first one after
    :meth:`at_once` (when no step is left to protect). Used as a context manager; outside the
    main thread (where handlers cannot be installed) it only reports requests made through
    :meth:`request`. Loader workers forked inside the context inherit the handler and ignore
    the signal (the main process stops the run and needs them until then).

    Attributes:
        signum: the signal that asked to stop (SIGINT for a :meth:`request`), or None.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._immediate = False
        self._pid = os.getpid()
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StepInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous = {}

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to stop after the current step (what the first Ctrl-C does)."""
        self.requested = True
        if self.signum is None:
            self.signum = int(signum)

    def at_once(self) -> None:
        """From now on the first signal interrupts at once (e.g. during the final evaluation,
        once every step is saved); a request already made interrupts now.

        Raises:
            KeyboardInterrupt: a stop was already requested.
        """
        self._immediate = True
        if self.requested:
            raise KeyboardInterrupt

    @property
    def signal_name(self) -> str:
        """``SIGINT`` or ``SIGTERM``: what stopped the run (SIGINT when nothing did yet)."""
        return signal.Signals(self.signum or signal.SIGINT).name

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked loader worker: the main process decides
        again = self.requested or self._immediate
        self.request(signum)
        self.signum = int(signum)  # SIGTERM after a Ctrl-C: the run is being terminated
        if again:
            raise KeyboardInterrupt

    def should_stop(self, device: torch.device) -> bool:
        """True when any rank was asked to stop (all ranks then stop after the same step)."""
        if get_world_size() == 1:
            return self.requested
        flag = torch.tensor([float(self.requested)], device=device)
        return bool(all_reduce_sum(flag).item() > 0)
