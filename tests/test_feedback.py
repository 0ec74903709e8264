import os
import textwrap
import time

import numpy as np
import pytest

import uniroute_jax as ur
from uniroute_jax._src.feedback import observe, observe_file, posterior, sample_psi, sampling_posterior

from child_processes import HANG_CEILING_S, SLACK, spawn, wait_all, wait_ready


@pytest.fixture(scope="module")
def world():
    w = ur.synthetic_world(3, n_prompts=900, n_models=3)
    x, q = np.asarray(w.prompts.embeddings), np.asarray(w.quality)
    router = ur.UniRouter.fit(x[:400], 6, seed=0, n_init=1)
    return router, x, q


def test_observe_equals_representing_all_labels_at_once(world):
    router, x, q = world
    names, costs = ["a", "b", "c"], [0.1, 0.5, 1.0]
    first = router.represent(x[400:550], q[400:550], names, costs)
    # New labels for two of the models, interleaved, one of them fractional.
    served = np.arange(550, 700)
    model = np.array(names)[np.arange(served.size) % 2]
    correct = q[served, np.arange(served.size) % 2]
    updated = observe(first, router, x[served], list(model), correct)
    # Independent twin: error_vectors on the concatenated labels (NaN where a model was not run).
    q_all = np.full((300, 3), np.nan, np.float32)
    q_all[:150] = q[400:550]
    q_all[150 + np.arange(served.size), np.arange(served.size) % 2] = correct
    expected = router.represent(x[400:700], q_all, names, costs)
    np.testing.assert_allclose(updated.counts, expected.counts, atol=1e-5)
    np.testing.assert_allclose(updated.error_sums, expected.error_sums, atol=1e-5)
    np.testing.assert_allclose(updated.psi, expected.psi, atol=1e-6)
    # Model c got no label: its row is untouched; the input pool is not modified.
    np.testing.assert_array_equal(updated.psi[2], first.psi[2])
    np.testing.assert_array_equal(first.counts, router.represent(x[400:550], q[400:550], names, costs).counts)


def test_observe_checks_its_input(world):
    router, x, q = world
    pool = router.represent(x[400:500], q[400:500], ["a", "b", "c"], [0.1, 0.5, 1.0])
    with pytest.raises(ValueError, match="not in the pool"):
        observe(pool, router, x[:2], "zzz", [1, 0])
    with pytest.raises(ValueError, match="correct must lie in"):
        observe(pool, router, x[:2], "a", [1, 2])
    with pytest.raises(ValueError, match="model has 3 names"):
        observe(pool, router, x[:2], ["a", "b", "c"], [1, 0])
    with pytest.raises(ValueError, match="embeddings has 3 prompts"):
        observe(pool, router, x[:3], ["a", "b"], [1, 0])


def test_posterior_mean_is_the_estimate_and_draws_follow_it(world):
    router, x, q = world
    pool = router.represent(x[400:460], q[400:460], ["a", "b", "c"], [0.1, 0.5, 1.0])
    a, b = posterior(pool, router.alpha)
    np.testing.assert_allclose(a / (a + b), pool.psi, atol=1e-6)
    draws = np.stack([sample_psi(a, b, np.random.default_rng(s)) for s in range(3000)])
    np.testing.assert_allclose(draws.mean(0), pool.psi, atol=0.03)
    # Fewer labels, wider posterior: the Beta variance a*b / ((a+b)^2 (a+b+1)) is matched.
    var = a * b / ((a + b) ** 2 * (a + b + 1))
    np.testing.assert_allclose(draws.var(0), var, atol=0.01)


@pytest.mark.parametrize("method", ["hierarchical", "prior"])
def test_thompson_draws_of_an_estimator_pool_centre_on_its_rows_with_its_width(world, method):
    router, x, q = world
    # Two LLMs with 300 labels each, a new one with 12: the pool's rows follow the estimator.
    old = router.represent(x[400:700], q[400:700, :2], ["a", "b"], [0.1, 1.0])
    pool = (old + router.represent(x[700:712], q[700:712, 2:], ["c"], [0.5])).rederive(method)
    a, b = sampling_posterior(pool, router.alpha)
    draws = np.stack([sample_psi(a, b, np.random.default_rng(s)) for s in range(3000)])
    # Centred on the rows the router serves (the alpha rule of `posterior` is not, under hierarchical).
    np.testing.assert_allclose(draws.mean(0), pool.psi, atol=0.02)
    # The new LLM's twelve labels leave it far wider than the others on average over clusters.
    var = draws.var(0).mean(1)
    assert var[2] > 4 * var[:2].max()
    # Rows as given keep the alpha rule.
    assert all(np.array_equal(s, t) for s, t in zip(sampling_posterior(old, router.alpha),
                                                     posterior(old, router.alpha)))


def test_observe_file_refuses_bad_input_without_touching_the_file(world, tmp_path):
    router, x, q = world
    path = router.represent(x[400:500], q[400:500], ["a", "b", "c"], [0.1, 0.5, 1.0]).save(tmp_path / "pool.npz")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not in the pool"):
        observe_file(path, router, x[:1], "nope", [1.0])
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.npz", "pool.npz.lock"]


WRITER = textwrap.dedent("""
    import os, sys, time
    import numpy as np, uniroute_jax as ur
    from uniroute_jax._src import feedback

    router_path, pool_path, x_path, model, n, ready, go, wait = sys.argv[1:9]
    router, x = ur.UniRouter.load(router_path), np.load(x_path)
    # Compile before the start signal, so both writers spend the race inside observe_file.
    feedback.observe(ur.Pool.load(pool_path), router, x[:1], model, [1.0])
    # A slow disk: reading the pool takes 5 ms, so unsynchronised read-change-writes overlap.
    real_load = ur.Pool.load.__func__
    def slow_load(cls, path):
        pool = real_load(cls, path)
        time.sleep(0.005)
        return pool
    ur.Pool.load = classmethod(slow_load)
    open(ready, "w").close()
    deadline = time.monotonic() + float(wait)
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            sys.exit(3)
        time.sleep(0.002)
    for i in range(int(n)):
        feedback.observe_file(pool_path, router, x[i:i + 1], model, [float(i % 2)])
""")


@pytest.mark.slow  # two fresh Python processes importing JAX, then 120 locked read-change-writes
def test_two_processes_observing_one_file_lose_no_update(world, tmp_path):
    router, x, q = world
    router.save(tmp_path / "router.npz")
    pool = router.represent(x[400:500], q[400:500], ["a", "b", "c"], [0.1, 0.5, 1.0])
    path = pool.save(tmp_path / "pool.npz")
    np.save(tmp_path / "x.npy", x[700:760])
    (tmp_path / "writer.py").write_text(WRITER)
    n, go = 60, tmp_path / "go"
    spawned = time.monotonic()
    procs = [spawn(tmp_path / "writer.py", str(tmp_path / "router.npz"), str(path), str(tmp_path / "x.npy"), m, str(n),
                   str(tmp_path / f"ready_{m}"), str(go), str(HANG_CEILING_S)) for m in ("a", "b")]
    startup = wait_ready([tmp_path / "ready_a", tmp_path / "ready_b"], procs, spawned)
    deadline = time.monotonic() + SLACK * startup
    go.touch()  # both writers start their 60 read-change-writes at once
    loads = 0
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        ur.Pool.load(path)  # a reader always finds a whole, valid file
        loads += 1
        time.sleep(0.005)
    results = wait_all(procs, deadline, f"{SLACK} x the writers' start-up ({startup:.1f} s)")
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    final = ur.Pool.load(path)
    # Every observation is counted, in its own cluster (a NumPy count of the writers' labels): an
    # update lost to an unlocked read-change-write shows up here.
    clusters = np.asarray(router.assign(x[700:700 + n]))
    per_writer = np.bincount(clusters, minlength=router.n_clusters)
    errors = np.bincount(clusters, weights=1.0 - np.arange(n) % 2, minlength=router.n_clusters)
    np.testing.assert_array_equal(final.counts - pool.counts, [per_writer, per_writer, np.zeros_like(per_writer)])
    np.testing.assert_allclose(final.error_sums - pool.error_sums, [errors, errors, np.zeros_like(errors)], atol=1e-4)
    assert loads > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "pool.npz", "pool.npz.lock", "ready_a", "ready_b",
                                                          "router.npz", "writer.py", "x.npy"]


def test_observe_command_updates_the_file(world, tmp_path, capsys):
    from uniroute_jax._src.cli import main

    router, x, q = world
    router.save(tmp_path / "r.npz")
    pool = router.represent(x[400:500], q[400:500], ["a", "b", "c"], [0.1, 0.5, 1.0])
    pool.save(tmp_path / "p.npz")
    np.save(tmp_path / "e.npy", x[800:803])
    code = main(["observe", "-r", str(tmp_path / "r.npz"), "-p", str(tmp_path / "p.npz"),
                 "-e", str(tmp_path / "e.npy"), "--model", "b", "--correct", "1,0,1"])
    assert code == 0 and "3 observation(s)" in capsys.readouterr().out
    np.testing.assert_allclose(ur.Pool.load(tmp_path / "p.npz").psi,
                               observe(pool, router, x[800:803], "b", [1, 0, 1]).psi)


def test_observe_names_a_missing_model_argument(world):
    router, x, q = world
    pool = router.represent(x[400:450], q[400:450], ["a", "b", "c"], [0.1, 0.5, 1.0])
    with pytest.raises(TypeError, match=r"model must be .*got None"):
        observe(pool, router, x[:2], None, [1, 0])
    with pytest.raises(TypeError, match=r"model\[1\] must be .*got 3"):
        observe(pool, router, x[:2], ["a", 3], [1, 0])


def test_observe_refuses_a_read_only_pool_as_add_model_does(world, tmp_path, capsys):
    from uniroute_jax._src.cli import main

    router, x, q = world
    path = router.represent(x[400:450], q[400:450], ["a", "b", "c"], [0.1, 0.5, 1.0]).save(tmp_path / "pool.npz")
    os.chmod(path, 0o444)
    before = path.read_bytes()
    with pytest.raises(PermissionError, match="pool.npz is read-only"):
        observe_file(path, router, x[:1], "a", [1.0])
    router.save(tmp_path / "r.npz")
    np.save(tmp_path / "e.npy", x[800:801])
    code = main(["observe", "-r", str(tmp_path / "r.npz"), "-p", str(path), "-e", str(tmp_path / "e.npy"),
                 "--model", "a", "--correct", "1"])
    assert code == 2 and "read-only" in capsys.readouterr().err
    assert path.read_bytes() == before and (path.stat().st_mode & 0o777) == 0o444
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy", "pool.npz", "pool.npz.lock", "r.npz"]
