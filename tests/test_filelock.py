"""The read-change-write lock (`filelock.locked`): a writer kept waiting says who holds the lock,
and gives up after the time it was given, with nothing written and nothing of the holder's lost."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import uniroute_jax
from uniroute_jax._src.cli import main
from uniroute_jax._src.feedback import observe_file
from uniroute_jax._src.router import Pool, UniRouter

ENV = {**os.environ, "PYTHONPATH": str(Path(uniroute_jax.__file__).resolve().parents[1]), "JAX_PLATFORMS": "cpu"}

HOLDER = textwrap.dedent("""
    import sys
    from uniroute_jax._src.filelock import locked
    from uniroute_jax._src.pool import Pool
    with locked(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.readline()
        pool = Pool.load(sys.argv[1])  # the holder's own change, saved before it lets go
        pool.with_costs(pool.costs + 10).save(sys.argv[1])
""")


@pytest.mark.slow  # three fresh processes importing JAX, side by side
def test_a_waiting_writer_names_the_holder_and_gives_up_when_told(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    router = UniRouter.fit(x[:30], 2, n_init=1)
    router.save(tmp_path / "r.npz")
    start = router.represent(x[30:], (rng.random((10, 2)) < 0.5).astype(float), ["a", "b"], [1.0, 2.0])
    path = start.save(tmp_path / "pool.npz")
    np.save(tmp_path / "e.npy", x[:1])
    np.save(tmp_path / "val.npy", x[30:])
    np.save(tmp_path / "q.npy", np.ones(10))
    t0 = time.monotonic()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], env=ENV, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    startup = time.monotonic() - t0
    before = path.read_bytes()
    commands = {
        "observe": ["observe", "-r", tmp_path / "r.npz", "-p", path, "-e", tmp_path / "e.npy", "--model", "a",
                    "--correct", "1", "--lock-timeout", "1.5"],
        "add-model": ["add-model", "-r", tmp_path / "r.npz", "-p", path, "--val-embeddings", tmp_path / "val.npy",
                      "--correctness", tmp_path / "q.npy", "--name", "c", "--cost", "3", "--estimator", "mean",
                      "--lock-timeout", "1.5"],
    }
    commands = {k: [str(a) for a in v] for k, v in commands.items()}
    # Both wait on the lock, say after a second who holds it, and give up after --lock-timeout by
    # design; the deadline below only turns a hung child into a failure.
    waiting = [subprocess.Popen([sys.executable, "-m", "uniroute_jax._src.cli", *argv], env=ENV, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in commands.values()]
    deadline = time.monotonic() + 1.5 + 30 * startup
    for p in waiting:
        try:
            _, err = p.communicate(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            for q in (*waiting, holder):
                q.kill()
            pytest.fail(f"a waiting command hung past {30 * startup:.0f} s")
        lines = err.splitlines()
        assert p.returncode == 2, err
        assert any("waiting for the lock on" in line and f"held by another process (pid {holder.pid})" in line for line in lines[:-1]), err
        assert lines[-1].startswith("uniroute: error:") and f"locked by another process (pid {holder.pid})" in lines[-1], err
        assert "gave up after 1.5 s" in lines[-1]
    assert path.read_bytes() == before  # those that gave up wrote nothing
    with pytest.raises(TimeoutError, match=rf"locked by another process \(pid {holder.pid}\)"):
        observe_file(path, router, x[:1], "a", [1.0], lock_timeout=0.2)  # the Python API's timeout
    holder.communicate("\n")
    assert holder.returncode == 0
    # Now the same commands go through, and nothing of either side is lost.
    for argv in commands.values():
        assert main(argv) == 0
    pool = Pool.load(path)
    assert pool.names == ("a", "b", "c")
    np.testing.assert_array_equal(pool.costs, [11, 12, 3])  # the holder's change is kept
    np.testing.assert_array_equal(pool.counts.sum(1), [start.counts[0].sum() + 1, start.counts[1].sum(), 10])
