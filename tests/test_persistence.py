"""Replacing a file (`persistence.write_atomic`, under every `save`): through a symlink, never over a
read-only file, and without the temporary files of writers that were killed mid-save."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import uniroute_jax
from uniroute_jax._src import filelock, persistence
from uniroute_jax._src.pool import Pool

ENV = {**os.environ, "PYTHONPATH": str(Path(uniroute_jax.__file__).resolve().parents[1])}


def _pool(cost: float) -> Pool:
    return Pool(("a",), [cost], [[0.2, 0.4]], [[1, 1]], [[0.2, 0.4]])


@pytest.mark.parametrize("relative", [False, True])
def test_a_symlinked_file_is_replaced_where_it_lives(tmp_path, relative):
    store = tmp_path / "store"
    store.mkdir()
    _pool(1.0).save(store / "pool.npz")
    link = tmp_path / "pool.npz"
    link.symlink_to(Path("store/pool.npz") if relative else store / "pool.npz")
    target = os.readlink(link)
    _pool(2.0).save(link)
    assert link.is_symlink() and os.readlink(link) == target  # the link is kept as it was
    assert Pool.load(store / "pool.npz").costs[0] == 2.0  # and the real file took the new pool
    assert filelock.lock_path(link) == (store / "pool.npz.lock").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.npz", "store"]  # no temp file beside the link


def test_a_read_only_file_is_never_replaced(tmp_path):
    path = _pool(1.0).save(tmp_path / "pool.npz")
    os.chmod(path, 0o444)
    before = path.read_bytes()
    with pytest.raises(PermissionError, match=r"pool.npz is read-only"):
        _pool(2.0).save(path)
    with pytest.raises(PermissionError, match=r"out.csv is read-only"):
        (tmp_path / "out.csv").write_text("keep\n")
        os.chmod(tmp_path / "out.csv", 0o400)
        with persistence.write_atomic(tmp_path / "out.csv", "w") as f:
            f.write("lost\n")
    assert path.read_bytes() == before and (tmp_path / "out.csv").read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "pool.npz"]


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from uniroute_jax._src import persistence
    with persistence.write_atomic(sys.argv[1]) as f:
        f.write(b"PK\\x03\\x04 half a pool")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)  # killed mid-save: nothing cleans up
""")

LIVE_WRITER = textwrap.dedent("""
    import sys
    from uniroute_jax._src import persistence
    with persistence.write_atomic(sys.argv[1], "w") as f:
        f.write("written while another save ran")
        print("writing", flush=True)
        sys.stdin.readline()
""")


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
def test_a_save_removes_temp_files_of_killed_writers_only(tmp_path):
    path = _pool(1.0).save(tmp_path / "pool.npz")
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], env=ENV)
    assert killed.returncode == -9
    (left,) = _temps(tmp_path)  # the killed writer's temp file
    # A writer still at work keeps its temp file, and its save still lands.
    live = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(tmp_path / "pool.npz")], env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert live.stdout.readline() == "writing\n"
    (held,) = set(_temps(tmp_path)) - {left}
    # A temp file of a live process (this one) that has not been touched for days is stale too.
    old = tmp_path / held.replace(f".{live.pid}-", f".{os.getpid()}-", 1)
    old.write_bytes(b"left days ago")
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    # Another file's temp files, even a dead writer's, are not this save's business.
    unrelated = tmp_path / left.replace(".pool.npz.", ".other.npz.", 1)
    unrelated.write_bytes(b"")
    _pool(2.0).save(path)
    assert _temps(tmp_path) == sorted([held, unrelated.name])
    live.communicate("\n")
    assert live.returncode == 0 and path.read_text() == "written while another save ran"
    assert _temps(tmp_path) == [unrelated.name]
