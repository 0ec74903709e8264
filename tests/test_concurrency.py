"""Concurrent writers and readers: no lost model, no torn file, no stray temporary file.

The multi-process tests start real `python` processes so that the file system, not the GIL,
decides the interleaving. Their deadlines scale with a child's start-up measured on this machine
just before (`child_processes`), so a busy machine slows them down without failing them, while a
child that never returns still fails the test instead of hanging the suite.
"""

import os
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from uniroute_jax._src.router import Pool, UniRouter

from child_processes import HANG_CEILING_S, SLACK, spawn, timed_child, wait_all, wait_ready


def _stray(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or ".tmp" in p.name)


ADD_MODEL_WORKER = textwrap.dedent("""
    import os, sys, time
    from uniroute_jax._src import cli
    from uniroute_jax._src import router  # pay the imports before the start signal

    # A slow disk: reading the pool takes 0.2 s, so unsynchronised read-change-writes overlap.
    real_load = router.Pool.load.__func__
    def slow_load(cls, path):
        pool = real_load(cls, path)
        time.sleep(0.2)
        return pool
    router.Pool.load = classmethod(slow_load)
    ready, go, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
    open(ready, "w").close()
    deadline = time.monotonic() + wait
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.002)
    sys.exit(cli.main(sys.argv[4:]))
""")


@pytest.mark.slow  # five add-model processes, four queueing on the lock: 1.5-5 min on a busy 2-core machine
def test_concurrent_add_model_keeps_every_model(tmp_path):
    n = 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    UniRouter.fit(x, 3, n_init=1).save(tmp_path / "router.npz")
    np.save(tmp_path / "val.npy", x[:30])
    for i in range(n + 1):
        np.savetxt(tmp_path / f"q{i}.csv", (rng.random(30) < 0.3 + 0.1 * i).astype(float), fmt="%g")
    script = tmp_path / "worker.py"
    script.write_text(ADD_MODEL_WORKER)
    go = tmp_path / "go"

    def args(i):
        return ("add-model", "-r", str(tmp_path / "router.npz"), "-p", str(tmp_path / "pool.npz"), "--val-embeddings",
                str(tmp_path / "val.npy"), "--correctness", str(tmp_path / f"q{i}.csv"), "--name", f"m{i}",
                "--cost", str(i + 1))

    # The first model is added alone, and timed: one child's start-up plus a tiny add-model on this
    # machine now, which sets the deadline of the race below (busy machine, longer deadline).
    go.touch()
    one, code, err = timed_child(script, str(tmp_path / "ready0"), str(go), "0", *args(0))
    assert code == 0, err
    go.unlink()
    budget = SLACK * one
    spawned = time.monotonic()
    procs = [spawn(script, str(tmp_path / f"ready{i}"), str(go), str(budget), *args(i)) for i in range(1, n + 1)]
    wait_ready([tmp_path / f"ready{i}" for i in range(1, n + 1)], procs, spawned)
    deadline = spawned + budget
    go.touch()  # every worker starts its read-change-write at once
    results = wait_all(procs, deadline, f"{SLACK} x one add-model ({one:.1f} s) = {budget:.0f} s")
    for code, _, err in results:
        assert code == 0, err
    pool = Pool.load(tmp_path / "pool.npz")
    names = [f"m{i}" for i in range(n + 1)]
    assert sorted(pool.names) == names
    # Each model's row is the one its own run computed (costs were i + 1).
    np.testing.assert_array_equal(pool.costs[pool.index(names)], np.arange(1, n + 2))
    assert _stray(tmp_path) == []


SAVE_WORKER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    from uniroute_jax._src import persistence
    path, stop, seed, ready, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    wait = float(sys.argv[6])
    rng = np.random.default_rng(seed)
    failures = 0
    open(ready, "w").close()
    deadline = time.monotonic() + wait
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.002)
    t_end = time.time() + 2.0
    for i in range(400):
        if os.path.exists(stop) or time.time() > t_end:
            break
        m = int(rng.integers(1, 40))
        arrays = {"costs": np.full(m, seed, np.float32), "psi": rng.random((m, 64)).astype(np.float32),
                  "counts": np.ones((m, 64), np.float32), "error_sums": np.zeros((m, 64), np.float32)}
        try:
            persistence.save_arrays(path, "pool", arrays, {"names": [f"w{seed}_{j}" for j in range(m)]})
        except Exception as err:
            failures += 1
            print(type(err).__name__, err, file=sys.stderr)
    print(failures)
""")


def test_reader_never_sees_a_torn_file_during_concurrent_saves(tmp_path):
    path = tmp_path / "pool.npz"
    Pool.empty(64).save(path)
    script = tmp_path / "saver.py"
    script.write_text(SAVE_WORKER)
    stop = tmp_path / "stop"
    go = tmp_path / "go"
    spawned = time.monotonic()
    writers = [spawn(script, str(path), str(stop), str(seed), str(tmp_path / f"ready{seed}"), str(go),
                     str(HANG_CEILING_S)) for seed in (1, 2)]
    # The writers' start-up, measured here, sets the deadline of their two seconds of saving.
    startup = wait_ready([tmp_path / f"ready{seed}" for seed in (1, 2)], writers, spawned)
    budget = SLACK * startup
    deadline = time.monotonic() + budget
    go.touch()  # both writers save at once, for about two seconds
    loads, corrupt, t0 = 0, [], time.time()
    # Bounded in count and time; stops early once both writers are done.
    while loads < 3000 and time.time() - t0 < 6 and any(w.poll() is None for w in writers):
        try:
            pool = Pool.load(path)
        except ValueError as err:
            corrupt.append(str(err))
        else:
            # A whole file: every row was written by one writer.
            assert len(set(pool.costs.tolist())) <= 1
        loads += 1
    stop.touch()
    results = wait_all(writers, deadline, f"{SLACK} x the writers' start-up ({startup:.1f} s) = {budget:.0f} s")
    assert corrupt == [], f"{len(corrupt)} of {loads} loads failed, first: {corrupt[0]}"
    for code, out, err in results:
        assert code == 0 and out.strip() == "0", err
    assert loads > 10
    Pool.load(path)
    assert _stray(tmp_path) == []


def test_concurrent_saves_in_threads_use_distinct_temp_files(tmp_path):
    path = tmp_path / "pool.npz"
    errors = []

    def save(seed):
        rng = np.random.default_rng(seed)
        for _ in range(25):
            try:
                Pool(("a", "b"), [seed, seed], rng.random((2, 200)), np.ones((2, 200)), np.zeros((2, 200))).save(path)
            except Exception as err:  # a shared temp name shows up as a vanished or torn file
                errors.append(repr(err))

    threads = [threading.Thread(target=save, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert Pool.load(path).costs[0] in range(4)
    assert _stray(tmp_path) == []


def test_failed_save_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "pool.npz"
    old = Pool(("a",), [1.0], [[0.2, 0.3]], [[1, 1]], [[0.2, 0.3]])
    old.save(path)
    before = path.read_bytes()

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="No space left"):
        Pool(("b",), [2.0], [[0.5, 0.5]], [[1, 1]], [[0.5, 0.5]]).save(path)

    def interrupted_savez(f, **arrays):
        f.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted_savez)
    with pytest.raises(KeyboardInterrupt):
        Pool(("b",), [2.0], [[0.5, 0.5]], [[1, 1]], [[0.5, 0.5]]).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.npz"]


def _record_syncs_and_renames(monkeypatch) -> list[tuple]:
    """Patches `os.fsync` and `os.replace` to log, in order, what each one saw, then do its work.

    An fsync logs the file's inode and its size as the OS sees it then (bytes still in Python's
    buffer do not count); a rename logs the inode and size of the file it moves.
    """
    events, fsync, replace = [], os.fsync, os.replace

    def logged_fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, st.st_size))
        fsync(fd)

    def logged_replace(src, dst, **kw):
        st = os.stat(src)
        events.append(("replace", st.st_ino, st.st_size, Path(dst).name))
        replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", logged_fsync)
    monkeypatch.setattr(os, "replace", logged_replace)
    return events


@pytest.mark.parametrize("how", ["write_atomic", "Pool.save"])
def test_save_flushes_and_syncs_the_data_before_the_rename(tmp_path, monkeypatch, how):
    from uniroute_jax._src import persistence

    path = tmp_path / "out.npz"
    path.write_bytes(b"old")
    events = _record_syncs_and_renames(monkeypatch)
    if how == "write_atomic":
        with persistence.write_atomic(path, "w") as f:
            f.write("a,b\n1,2\n")  # far less than one buffer: only an explicit flush gets it to the OS
    else:
        Pool(("a",), [1.0], [[0.2, 0.3]], [[1, 1]], [[0.2, 0.3]]).save(path)
    monkeypatch.undo()
    renames = [e for e in events if e[0] == "replace"]
    assert len(renames) == 1 and renames[0][3] == "out.npz", events
    _, inode, size, _ = renames[0]
    assert size == path.stat().st_size > 3  # the new file, whole
    before = events[:events.index(renames[0])]
    # The temporary file was synced before it took the target's name, with every byte already
    # handed to the OS: a crash after the rename finds the new data, not an empty or short file.
    assert ("fsync", inode, size) in before, events


def test_save_keeps_the_replaced_files_permissions(tmp_path):
    path = tmp_path / "pool.npz"
    Pool.empty(2).save(path)
    os.chmod(path, 0o640)
    Pool.empty(2).save(path)
    assert (path.stat().st_mode & 0o777) == 0o640
    new = tmp_path / "new.npz"
    Pool.empty(2).save(new)
    umask = os.umask(0)
    os.umask(umask)
    assert (new.stat().st_mode & 0o777) == 0o666 & ~umask  # not mkstemp's 0o600


def test_lock_excludes_a_second_holder(tmp_path):
    from uniroute_jax._src import filelock

    target = tmp_path / "pool.npz"
    held, release, outcome = threading.Event(), threading.Event(), {}

    def holder():
        with filelock.locked(target):
            held.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(30)
    with pytest.raises(TimeoutError, match="locked by another process"):
        with filelock.locked(target, timeout=0.2):
            outcome["entered"] = True
    release.set()
    t.join(30)
    with filelock.locked(target, timeout=5):
        outcome["after"] = True
    assert outcome == {"after": True}
    assert filelock.lock_path(target).name == "pool.npz.lock"
