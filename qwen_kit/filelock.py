"""One exclusive lock between processes, on a lock file of its own (POSIX ``flock``; ``msvcrt``
on Windows). Used by the memory file and by the offline model conversion."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def exclusive_lock(path: Path, mode: int = 0o644) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created with ``mode`` if missing) while the block runs;
    other processes asking for it wait. Closing the file releases the lock, also on a crash."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        yield
    finally:
        os.close(fd)
