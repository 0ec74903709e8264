"""Every router method works the same way for both feature maps (hard k-means and soft learned).

Each check compares the router with an independent NumPy computation of `argmin Phi . Psi + lam c`
(ties to the cheaper model), for a `HardMap` and a `SoftMap` router alike.
"""

from __future__ import annotations

import numpy as np
import pytest

from uniroute_jax import HardMap, SoftMap, UniRouter

K, DIM, N_MODELS = 5, 6, 4


def _phi_numpy(router: UniRouter, x: np.ndarray) -> np.ndarray:
    fmap = router.feature_map
    if isinstance(fmap, HardMap):
        d = ((x[:, None, :] - fmap.centroids[None]) ** 2).sum(-1)
        return np.eye(K)[np.argmin(d, axis=1)]
    logits = x.astype(np.float64) @ fmap.theta.T.astype(np.float64) + fmap.bias
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _choose_numpy(scores: np.ndarray, costs: np.ndarray) -> np.ndarray:
    order = np.lexsort((np.arange(costs.size), costs))
    return order[np.argmin(scores[:, order], axis=1)]


@pytest.fixture(scope="module", params=["hard", "soft"])
def setup(request):
    rng = np.random.default_rng(3)
    centroids = 3.0 * rng.normal(size=(K, DIM)).astype(np.float32)
    if request.param == "hard":
        fmap = HardMap(centroids, "euclidean")
    else:
        fmap = SoftMap(rng.normal(size=(K, DIM)).astype(np.float32), rng.normal(size=K).astype(np.float32),
                       centroids, "euclidean")
    router = UniRouter(fmap)
    val = centroids[rng.integers(0, K, 300)] + rng.normal(size=(300, DIM)).astype(np.float32)
    q_val = (rng.random((300, N_MODELS)) < np.linspace(0.4, 0.9, N_MODELS)).astype(np.float32)
    costs = np.array([0.5, 1.0, 2.0, 4.0], np.float32)
    pool = router.represent(val, q_val, [f"m{i}" for i in range(N_MODELS)], costs)
    x = centroids[rng.integers(0, K, 600)] + rng.normal(size=(600, DIM)).astype(np.float32)
    q = (rng.random((600, N_MODELS)) < 0.7).astype(np.float32)
    return router, pool, x, q


def _expected(router, pool, x, lam, rows=None):
    rows = np.arange(len(pool)) if rows is None else np.asarray(rows)
    est = _phi_numpy(router, x) @ pool.psi[rows].T.astype(np.float64)
    return rows[_choose_numpy(est + lam * pool.costs[rows], pool.costs[rows])]


@pytest.mark.parametrize("lam", [0.0, 0.05, 0.2, 5.0])
def test_route_and_routing_table_match_numpy(setup, lam):
    router, pool, x, _ = setup
    expected = _expected(router, pool, x, lam)
    assert np.array_equal(router.route(x, pool, lam).index, expected)
    table = router.routing_table(pool, lam, jax_from=256)
    for batch in (x[:7], x):  # the host path (hard maps) and the jitted one
        assert np.array_equal(table(batch), np.asarray(pool.names)[_expected(router, pool, batch, lam)])


def test_routing_table_over_a_sub_pool(setup):
    router, pool, x, _ = setup
    names = ["m3", "m1"]
    table = router.routing_table(pool, 0.05, models=names)
    expected = _expected(router, pool, x, 0.05, rows=pool.index(names))
    assert np.array_equal(table(x), np.asarray(pool.names)[expected])
    assert np.array_equal(router.route(x, pool, 0.05, models=names).index, expected)


def test_estimates_are_phi_dot_psi(setup):
    router, pool, x, _ = setup
    np.testing.assert_allclose(router.estimates(x, pool), _phi_numpy(router, x) @ pool.psi.T, atol=1e-5)


def test_sweep_and_exact_curve_match_numpy(setup):
    router, pool, x, q = setup
    lams = np.array([0.0, 0.03, 0.1, 0.4, 3.0], np.float32)
    curves = router.sweep(x, pool, lams, quality=q)
    for j, lam in enumerate(lams):
        chosen = _expected(router, pool, x, float(lam))
        np.testing.assert_allclose(curves.mean_cost[0, j], pool.costs[chosen].mean(), rtol=1e-5)
        np.testing.assert_allclose(curves.mean_quality[0, j], q[np.arange(len(x)), chosen].mean(), rtol=1e-5)
    exact = router.exact_curve(x, pool, quality=q)
    valid = np.asarray(exact.valid[0])
    assert valid.sum() >= 2 and np.all(np.diff(np.asarray(exact.mean_cost[0])[valid]) <= 1e-6)


def test_calibrate_then_route_meets_the_budget_in_expectation(setup):
    router, pool, x, _ = setup
    target = 0.5 * (pool.costs.min() + pool.costs.max())
    cal = router.calibrate(x, pool, cost=target)
    hi = _expected(router, pool, x, float(cal.lam_high_cost[0]))
    lo = _expected(router, pool, x, float(cal.lam_low_cost[0]))
    p = float(cal.p_high[0])
    np.testing.assert_allclose(p * pool.costs[hi].mean() + (1 - p) * pool.costs[lo].mean(), target, rtol=1e-4)
    routed = router.route_calibrated(x, pool, cal, seed=0)
    assert np.all((routed.index == hi) | (routed.index == lo))
    takes_high = np.mean(routed.index[hi != lo] == hi[hi != lo])
    assert abs(takes_high - p) < 0.1


def test_save_load_round_trip_keeps_the_map(setup, tmp_path):
    router, pool, x, _ = setup
    loaded = UniRouter.load(router.save(tmp_path / "r"))
    assert type(loaded.feature_map) is type(router.feature_map)
    assert np.array_equal(loaded.route(x, pool, 0.1).index, router.route(x, pool, 0.1).index)


def test_constructor_rejects_a_metric_that_contradicts_the_map(setup):
    router, *_ = setup
    with pytest.raises(ValueError, match="contradicts the feature map's metric"):
        UniRouter(router.feature_map, metric="cosine")
    assert isinstance(UniRouter(np.eye(3)).feature_map, HardMap)


def test_learn_map_needs_a_hard_map():
    soft = UniRouter(SoftMap(np.eye(3, dtype=np.float32), np.zeros(3), np.eye(3), "euclidean"))
    x, q = np.eye(3, dtype=np.float32), np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="starts from a k-means router"):
        soft.learn_map(x, q, x, q)


def test_represent_with_an_estimator(setup):
    router, pool, x, _ = setup  # both maps represent LLMs on the hard clusters (psi_source="hard")
    rng = np.random.default_rng(11)
    q_new = (rng.random((60, 1)) < 0.5).astype(np.float32)
    val = x[:60]
    # "shrinkage" is the router's own pseudo-count rule; "mean" the plain per-cluster mean.
    np.testing.assert_allclose(router.represent(val, q_new, ["n"], [1.0], estimator="shrinkage", reference=pool).psi,
                               router.represent(val, q_new, ["n"], [1.0]).psi, atol=1e-6)
    mean = router.represent(val, q_new, ["n"], [1.0], estimator="mean", reference=pool)
    labels = router.assign(val)
    for k in np.unique(labels):
        np.testing.assert_allclose(mean.psi[0, k], 1.0 - q_new[labels == k, 0].mean(), atol=1e-6)
    prior = router.represent(val[:5], q_new[:5], ["n"], [1.0], estimator="prior", reference=pool)
    assert prior.router_fingerprint == router.fingerprint and np.all((prior.psi >= 0) & (prior.psi <= 1))


def test_select_prompts_contract(setup):
    router, pool, x, _ = setup
    for strategy in ("random", "stratified", "informative"):
        idx = router.select_prompts(x, 12, pool, strategy=strategy, seed=1)
        assert idx.shape == (12,) and np.unique(idx).size == 12 and idx.min() >= 0 and idx.max() < len(x)
    with pytest.raises(ValueError, match="at least two represented LLMs"):
        router.select_prompts(x, 5, None, strategy="informative")
