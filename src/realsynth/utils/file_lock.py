"""An OS file lock held for as long as a process lives (``flock``; ``msvcrt`` on Windows).

The operating system releases the lock when its holder dies, however it dies, so a free lock on
a file that should be held means its holder is gone: the run folder and the trials of a sweep
rely on that.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def try_lock(fd: int) -> bool:
    """Non-blocking exclusive lock on the open file ``fd``: True when taken."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def acquire(path: str | Path) -> int | None:
    """Take the lock on ``path`` (created if missing) and write this process into it.

    Returns:
        The open descriptor that holds the lock (close it to release), or None when another
        live process holds it (:func:`holder` names that process).
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    if not try_lock(fd):
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()}: {' '.join(sys.argv) or 'python'}\n".encode())
    return fd


def holder(path: str | Path) -> str:
    """What the lock file says of the process that holds (or last held) it."""
    try:
        text = Path(path).read_bytes().decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text or "unknown process"


def release(fd: int | None) -> None:
    """Release a lock taken by :func:`acquire` (closing the descriptor releases it)."""
    if fd is not None:
        os.close(fd)
