"""Per-request decision costs `[n, n_models]` in every kernel: routing, sweeps, exact curves, calibration.

Two independent checks: costs that are constant per model, given as rows, reproduce the per-model
results exactly; costs that vary per request match a NumPy twin of `argmin est + lam * cost[row]`
with ties to the row's cheaper model, then the lower index.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import uniroute_jax as ur
from uniroute_jax._src.routing import route_kernel

N, M, K = 40, 5, 6


def _choose_numpy(scores, costs, mask):
    out = np.empty(scores.shape[0], np.int64)
    for i in range(scores.shape[0]):
        c = costs if costs.ndim == 1 else costs[i]
        ok = np.flatnonzero(mask)
        best = min(ok, key=lambda m: (scores[i, m], c[m], m))
        out[i] = best
    return out


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    est = rng.uniform(size=(N, M)).astype(np.float32)
    per_model = np.array([0.3, 1.0, 2.5, 0.7, 4.0], np.float32)
    per_request = (per_model[None, :] * rng.uniform(0.2, 3.0, size=(N, 1))
                   + rng.uniform(0, 0.5, size=(N, M))).astype(np.float32)
    quality = (rng.random((N, M)) < 0.6).astype(np.float32)
    return est, per_model, per_request, quality


def test_constant_rows_give_the_per_model_results_exactly(world):
    est, per_model, _, quality = world
    rows = np.broadcast_to(per_model, (N, M)).copy()
    masks = np.array([[1, 1, 1, 1, 1], [1, 0, 1, 0, 1], [0, 1, 0, 1, 0]], bool)
    units = ur.make_units(None, quality=quality, costs=per_model)
    lams = np.array([0.0, 0.05, 0.2, 1.0, 10.0], np.float32)
    for method in ("direct", "breakpoints"):
        a = ur.sweep(est, units, per_model, lams, pool_masks=masks, method=method)
        b = ur.sweep(est, units, rows, lams, pool_masks=masks, method=method)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ea, eb = ur.exact_curve(est, units, per_model, pool_masks=masks), ur.exact_curve(est, units, rows, pool_masks=masks)
    for x, y in zip(ea, eb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    phi = np.eye(K, dtype=np.float32)[np.arange(N) % K]
    psi = np.random.default_rng(1).uniform(size=(M, K)).astype(np.float32)
    for lam in (0.0, 0.1, 0.5):
        assert np.array_equal(np.asarray(ur.route(phi, psi, per_model, lam).choice),
                              np.asarray(ur.route(phi, psi, rows, lam).choice))
    cal_a, cal_b = ur.calibrate(ea, cost=1.0), ur.calibrate(eb, cost=1.0)
    key = jax.random.key(0)
    np.testing.assert_array_equal(np.asarray(ur.route_calibrated(cal_a, est, per_model, key, pool_masks=masks).choice),
                                  np.asarray(ur.route_calibrated(cal_b, est, rows, key, pool_masks=masks).choice))


@pytest.mark.parametrize("lam", [0.0, 0.02, 0.1, 0.3, 2.0])
def test_routing_with_request_costs_matches_numpy(world, lam):
    est, _, per_request, _ = world
    mask = np.array([1, 1, 0, 1, 1], bool)
    phi = np.eye(N, dtype=np.float32)  # one cluster per prompt: phi @ psi.T == est
    got = np.asarray(route_kernel(phi, est.T.copy(), per_request, mask, np.float32(lam)).choice)
    assert np.array_equal(got, _choose_numpy(est + lam * per_request, per_request, mask))


def test_ties_go_to_each_requests_own_cheaper_model():
    est = np.full((2, 3), 0.5, np.float32)
    costs = np.array([[3.0, 1.0, 2.0], [1.0, 3.0, 2.0]], np.float32)
    phi = np.eye(2, dtype=np.float32)
    got = np.asarray(route_kernel(phi, est.T.copy(), costs, np.ones(3, bool), np.float32(0.0)).choice)
    assert got.tolist() == [1, 0]
    # Equal costs and scores: the lower index wins.
    same = np.ones((2, 3), np.float32)
    assert np.asarray(route_kernel(phi, est.T.copy(), same, np.array([0, 1, 1], bool), np.float32(0.0)).choice).tolist() == [1, 1]


def test_sweep_and_exact_curve_with_request_costs_match_numpy(world):
    est, per_model, per_request, quality = world
    masks = np.array([[1, 1, 1, 1, 1], [0, 1, 1, 0, 1]], bool)
    units = ur.make_units(None, quality=quality, prompt_costs=per_request)
    lams = np.array([0.0, 0.03, 0.1, 0.4, 3.0], np.float32)
    for method in ("direct", "breakpoints"):
        res = ur.sweep(est, units, per_request, lams, pool_masks=masks, method=method)
        for p, mask in enumerate(masks):
            for j, lam in enumerate(lams):
                chosen = _choose_numpy(est + lam * per_request, per_request, mask)
                rows = np.arange(N)
                np.testing.assert_allclose(np.asarray(res.mean_cost)[p, j], per_request[rows, chosen].mean(), rtol=1e-5)
                np.testing.assert_allclose(np.asarray(res.mean_quality)[p, j], quality[rows, chosen].mean(), rtol=1e-5)
    exact = ur.exact_curve(est, units, per_request, pool_masks=masks)
    for p, mask in enumerate(masks):
        valid = np.asarray(exact.valid[p])
        starts = np.asarray(exact.lam_start[p])[valid]
        ends = np.append(starts[1:], starts[-1] * 2 + 1)
        for lo, hi, cost in zip(starts, ends, np.asarray(exact.mean_cost[p])[valid]):
            lam = 0.5 * (lo + hi)
            chosen = _choose_numpy(est + lam * per_request, per_request, mask)
            np.testing.assert_allclose(cost, per_request[np.arange(N), chosen].mean(), rtol=1e-4)


def test_calibration_with_request_costs_meets_the_budget(world):
    est, _, per_request, quality = world
    units = ur.make_units(None, quality=quality, prompt_costs=per_request)
    exact = ur.exact_curve(est, units, per_request)
    target = float(np.median(per_request))
    cal = ur.calibrate(exact, cost=target)
    hi = _choose_numpy(est + float(cal.lam_high_cost[0]) * per_request, per_request, np.ones(M, bool))
    lo = _choose_numpy(est + float(cal.lam_low_cost[0]) * per_request, per_request, np.ones(M, bool))
    p = float(cal.p_high[0])
    rows = np.arange(N)
    np.testing.assert_allclose(p * per_request[rows, hi].mean() + (1 - p) * per_request[rows, lo].mean(), target,
                               rtol=1e-4)


def test_bad_request_costs_shape_names_the_argument(world):
    est, per_model, _, quality = world
    units = ur.make_units(None, quality=quality, costs=per_model)
    with pytest.raises(ValueError, match=r"costs must have shape \(5,\) \(one per model\) or \(40, 5\)"):
        ur.sweep(est, units, np.ones((N - 1, M)), [0.1])
    with pytest.raises(ValueError, match="costs must be >= 0"):
        ur.exact_curve(est, units, -np.ones((N, M)))


def test_router_with_request_costs(world):
    rng = np.random.default_rng(5)
    centroids = 3 * rng.normal(size=(K, 4)).astype(np.float32)
    router = ur.UniRouter(centroids, "euclidean")
    val = centroids[rng.integers(0, K, 200)] + rng.normal(size=(200, 4)).astype(np.float32)
    pool = router.represent(val, (rng.random((200, M)) < 0.6).astype(np.float32), list("abcde"),
                            world[1])
    x = centroids[rng.integers(0, K, N)] + rng.normal(size=(N, 4)).astype(np.float32)
    per_request = world[2]
    est = pool.psi.T[router.assign(x)]
    for lam in (0.0, 0.05, 0.3):
        want = _choose_numpy(est + lam * per_request, per_request, np.ones(M, bool))
        assert np.array_equal(router.route(x, pool, lam, request_costs=per_request).index, want)
        # Constant rows: the per-cluster lookup and the per-request path agree.
        rows = np.broadcast_to(pool.costs, (N, M))
        assert np.array_equal(router.route(x, pool, lam, request_costs=rows).index, router.route(x, pool, lam).index)
    curves = router.sweep(x, pool, np.array([0.0, 0.1], np.float32), request_costs=per_request)
    chosen = _choose_numpy(est + 0.1 * per_request, per_request, np.ones(M, bool))
    np.testing.assert_allclose(curves.mean_cost[0, 1], per_request[np.arange(N), chosen].mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="request_costs must have shape"):
        router.route(x, pool, 0.1, request_costs=per_request[:, :2])
