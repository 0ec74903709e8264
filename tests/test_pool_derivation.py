"""A pool with an estimator derives every row from its labels whenever it changes: the same pool
whatever the order its LLMs were added in; old files re-derived once told; `observe` and `remove`."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import expit

import uniroute_jax as ur
from uniroute_jax._src import estimators as E
from uniroute_jax._src import persistence
from uniroute_jax._src.feedback import observe
from uniroute_jax._src.pool import Pool

K = 3
NAMES = ("d", "a", "c", "b")


def _labels(seed=0, r=len(NAMES), k=K):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=r)[:, None] + rng.normal(size=k)[None, :] + 0.5 * rng.normal(size=(r, k))
    counts = rng.integers(2, 12, size=(r, k)).astype(np.float32)
    return counts, rng.binomial(counts.astype(int), expit(z)).astype(np.float32)


def _single(i, counts, sums):
    return Pool((NAMES[i],), [float(i + 1)], np.full((1, counts.shape[1]), 0.5), counts[i:i + 1], sums[i:i + 1])


@settings(max_examples=8)
@given(st.permutations(range(len(NAMES))))
def test_adding_in_any_order_gives_the_same_pool(order):
    counts, sums = _labels()
    reference = Pool.empty(K).rederive("prior")
    for i in range(len(NAMES)):
        reference = reference + _single(i, counts, sums)
    pool = Pool.empty(K).rederive("prior")
    for i in order:
        pool = pool + _single(i, counts, sums)
    pool = pool.select(reference.names)
    assert pool.estimator == "prior"
    np.testing.assert_array_equal(pool.psi, reference.psi)
    # Each row is the estimator's on the whole pool, not the one frozen when it was added.
    want = E.pool_estimates(Pool(reference.names, reference.costs, np.full((len(NAMES), K), 0.5), counts, sums),
                            "prior").rows.psi
    np.testing.assert_allclose(reference.psi, want, atol=1e-6)


def test_remove_rederives_and_estimators_do_not_mix():
    counts, sums = _labels(1)
    pool = Pool(NAMES, [1.0] * 4, np.full((4, K), 0.5), counts, sums).rederive("prior")
    rest = pool.remove("a")
    want = E.pool_estimates(pool.select(["d", "c", "b"]), "prior").rows.psi
    np.testing.assert_allclose(rest.psi, want, atol=1e-6)
    assert np.abs(rest.psi - pool.select(["d", "c", "b"]).psi).max() > 1e-4  # it did change
    other = Pool(("e",), [1.0], np.full((1, K), 0.5), counts[:1], sums[:1], estimator="mean")
    with pytest.raises(ValueError, match="estimator"):
        pool + other
    with pytest.raises(ValueError, match="estimator"):
        Pool(("e",), [1.0], np.full((1, K), 0.5), counts[:1], sums[:1], estimator="median")


def test_a_file_of_the_previous_format_is_rederived_and_told_once(tmp_path):
    counts, sums = _labels(2)
    old_psi = np.full((4, K), 0.25, np.float32)  # rows frozen by an earlier version
    path = tmp_path / "old.npz"
    persistence.save_arrays(path, "pool", {"costs": np.ones(4, np.float32), "psi": old_psi, "counts": counts,
                                           "error_sums": sums}, {"names": list(NAMES)})
    with pytest.warns(UserWarning, match="before pools recorded their estimator") as told:
        upgraded = Pool.load(path, upgrade=True)
    assert len(told) == 1 and upgraded.estimator == E.DEFAULT_METHOD
    fresh = Pool(NAMES, np.ones(4), old_psi, counts, sums)
    np.testing.assert_allclose(upgraded.psi, E.pool_estimates(fresh, E.DEFAULT_METHOD).rows.psi, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # told once: a second load is silent
        again = Pool.load(path, upgrade=True)
    np.testing.assert_array_equal(again.psi, upgraded.psi)
    with pytest.warns(UserWarning, match="used as stored"):
        as_stored = Pool.load(path)
    np.testing.assert_array_equal(as_stored.psi, old_psi)
    assert as_stored.estimator is None
    # A file of this version records its estimator and loads silently, rows as saved.
    upgraded.save(tmp_path / "new.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = Pool.load(tmp_path / "new.npz")
    assert loaded.estimator == E.DEFAULT_METHOD
    np.testing.assert_array_equal(loaded.psi, upgraded.psi)


def test_observe_rederives_a_pool_with_an_estimator():
    w = ur.synthetic_world(4, n_prompts=500, n_models=3)
    x, q = np.asarray(w.prompts.embeddings), np.asarray(w.quality)
    router = ur.UniRouter.fit(x[:300], K, seed=0, n_init=1)
    pool = router.represent(x[300:330], q[300:330], ["a", "b", "c"], [0.1, 0.5, 1.0]).rederive("prior")
    served = np.arange(330, 360)
    updated = observe(pool, router, x[served], "b", q[served, 1])
    # Independent twin: the counts of every label, by hand, and the rows derived from them.
    clusters = router.assign(x[300:360])
    counts, sums = pool.counts.astype(np.float64).copy(), pool.error_sums.astype(np.float64).copy()
    np.add.at(counts, (1, clusters[30:]), 1.0)
    np.add.at(sums, (1, clusters[30:]), 1.0 - q[served, 1])
    np.testing.assert_allclose(updated.counts, counts, atol=1e-6)
    want = E.pool_estimates(Pool(pool.names, pool.costs, pool.psi, counts, sums), "prior").rows.psi
    np.testing.assert_allclose(updated.psi, want, atol=1e-6)
    assert updated.estimator == "prior"
