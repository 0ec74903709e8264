"""An exclusive lock for a file's read-change-write, held on a sidecar `<name>.lock` file.

    with locked(pool_path):
        pool = Pool.load(pool_path) + new
        pool.save(pool_path)

The lock is advisory (`fcntl.flock` on POSIX, `msvcrt.locking` on Windows): it orders writers that
take it, and readers need none because every save replaces the file atomically. The sidecar file is
left in place: deleting it while another process waits on it would let two writers in at once. It
sits beside the real file when `path` is a symlink (the file that a save replaces), and holds the
holder's pid, so that a writer kept waiting can say who it waits for.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from uniroute_jax._src.persistence import real_path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

NOTIFY_AFTER_S = 1.0
"""Seconds of waiting for the lock before `locked` says who holds it."""


def lock_path(path: str | os.PathLike) -> Path:
    """The sidecar lock file of `path`, beside the file a symlink `path` names."""
    path = real_path(path)
    return path.with_name(path.name + ".lock")


def _notice(message: str) -> None:
    print(f"[uniroute] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def locked(path: str | os.PathLike, *, timeout: float | None = None,
           notify: Callable[[str], None] | None = _notice) -> Iterator[Path]:
    """Holds an exclusive lock on `path` (through its sidecar) for the `with` block.

    Args:
      path: the file whose read-change-write is protected; it need not exist yet.
      timeout: seconds to wait for the lock before raising `TimeoutError` (default: wait).
      notify: called once with a line naming the holder when the lock is still taken after
        `NOTIFY_AFTER_S` seconds (default: printed on stderr); None to wait silently.

    Raises:
      TimeoutError: the lock was still held by another process after `timeout` seconds.
    """
    if timeout is not None:
        timeout = float(timeout)
        if not timeout >= 0 or timeout == float("inf"):
            raise ValueError(f"timeout must be a finite number of seconds >= 0, got {timeout}")
    side = lock_path(path)
    side.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(side, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, side, timeout, notify)
        try:
            _write_holder(fd, f"{os.getpid()}\n")
            yield side
        finally:
            _write_holder(fd, "")  # a pid left behind would name a process that no longer holds it
            _release(fd)
    finally:
        os.close(fd)


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:  # BlockingIOError on POSIX, PermissionError on Windows: taken
        return False


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        os.lseek(fd, 0, os.SEEK_SET)
        return f"another process (pid {int(os.read(fd, 32).decode().strip())})"
    return "another process"  # its pid not written yet, or by a version that did not write it


def _write_holder(fd: int, text: str) -> None:
    with contextlib.suppress(OSError):  # the pid is for messages only
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, text.encode())


def _acquire(fd: int, side: Path, timeout: float | None, notify: Callable[[str], None] | None) -> None:
    # Polls instead of blocking in flock: a blocked call could neither report nor time out.
    start = time.monotonic()
    pause, told = 0.001, notify is None
    while not _try_lock(fd):
        waited = time.monotonic() - start
        # Said before any timeout, so that whoever waited a second learns who held the lock.
        if not told and waited >= NOTIFY_AFTER_S:
            told = True
            limit = "until it is released" if timeout is None else f"for up to {timeout:g} s"
            notify(f"waiting for the lock on {side.with_suffix('')}: held by {_holder(fd)} ({side}); "
                   f"waiting {limit}")
        if timeout is not None and waited >= timeout:
            raise TimeoutError(f"{side.with_suffix('')} is locked by {_holder(fd)} ({side}): gave up after "
                               f"{timeout:g} s; nothing was written")
        time.sleep(pause)
        pause = min(2 * pause, 0.05)


def _release(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
