"""An exclusive lock for a file's read-change-write, held on a sidecar `<name>.lock` file.

    with locked(pool_path):
        pool = Pool.load(pool_path) + new
        pool.save(pool_path)

The lock is advisory (`fcntl.flock` on POSIX, `msvcrt.locking` on Windows): it orders writers that
take it, and readers need none because every save replaces the file atomically. The sidecar file is
left in place: deleting it while another process waits on it would let two writers in at once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt


def lock_path(path: str | os.PathLike) -> Path:
    """The sidecar lock file of `path`."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def locked(path: str | os.PathLike, *, timeout: float | None = None) -> Iterator[Path]:
    """Holds an exclusive lock on `path` (through its sidecar) for the `with` block.

    Args:
      path: the file whose read-change-write is protected; it need not exist yet.
      timeout: seconds to wait for the lock before raising `TimeoutError` (default: wait).
    """
    side = lock_path(path)
    side.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(side, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, side, timeout)
        try:
            yield side
        finally:
            _release(fd)
    finally:
        os.close(fd)


def _acquire(fd: int, side: Path, timeout: float | None) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
            else:
                os.lseek(fd, 0, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return
        except (BlockingIOError, PermissionError, OSError) as err:
            if fcntl is not None and deadline is None:
                raise
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{side} is locked by another process (waited {timeout}s)") from err
            time.sleep(0.01)


def _release(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
