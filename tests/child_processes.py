"""Real child processes for the concurrency tests, with deadlines scaled from a measured start-up.

A fixed deadline fails on a busy machine; none at all hangs the suite when a child never returns.
So each test measures its children's start-up on this machine first (`wait_ready`, or a first
child run alone through `timed_child`) and gives what follows `SLACK` times that.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import uniroute_jax

ROOT = str(Path(uniroute_jax.__file__).resolve().parents[1])
SLACK = 20
"""A deadline is this many times a child's measured start-up (or run): the children of one test,
a few of them sharing the CPUs and queueing on a lock, finish within a handful of those."""
HANG_CEILING_S = 900
"""Only the measurement itself has a fixed limit, far beyond any slow machine's start-up: it turns a
child that never starts or never returns into a failure rather than a hung suite."""


def spawn(script: Path, *args: str) -> subprocess.Popen:
    """`python script args...` importing this checkout of the library, on the CPU, output captured."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen([sys.executable, str(script), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop_group(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Stops a child started with `start_new_session=True` and everything it started: SIGTERM to its
    process group, SIGKILL when it has not exited within `timeout` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def _fail_hung(procs, why: str) -> None:
    for p in procs:
        p.kill()
        p.communicate()
    pytest.fail(f"a child process hung: still running past {why}")


def wait_all(procs, deadline: float, why: str) -> list[tuple[int, str, str]]:
    """Each child's `(returncode, stdout, stderr)`; kills them all past `deadline` (`time.monotonic`)."""
    out = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            _fail_hung(procs, why)
        out.append((p.returncode, so, se))
    return out


def timed_child(script: Path, *args: str, limit: float = HANG_CEILING_S) -> tuple[float, int, str]:
    """Runs one child to its end: `(seconds, returncode, stderr)`; fails the test past `limit` seconds."""
    t0 = time.monotonic()
    ((code, _, err),) = wait_all([spawn(script, *args)], t0 + limit, f"{limit:.0f} s")
    return time.monotonic() - t0, code, err


def wait_ready(paths, procs, t0: float) -> float:
    """Seconds from `t0` (`time.monotonic`) until every child has created its entry of `paths`.

    This is the children's start-up measured on this machine now, from which the caller scales the
    deadline of what follows. Returns early if a child exits (its exit code says why); kills them
    all and fails the test past `HANG_CEILING_S`.
    """
    while not all(Path(p).exists() for p in paths):
        if any(p.poll() is not None for p in procs):
            break
        if time.monotonic() > t0 + HANG_CEILING_S:
            _fail_hung(procs, f"{HANG_CEILING_S} s without starting")
        time.sleep(0.01)
    return time.monotonic() - t0
