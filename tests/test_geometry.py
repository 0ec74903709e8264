"""Geometry checks: the cosine k-means partition against a NumPy reference, and the direction of
every budget grid the library and the theory package ship."""

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import uniroute_jax as ur
from theory import bayes, experiments
from uniroute_jax._src import evaluation

# --------------------------------------------------------------------------- cosine k-means


def _fans(seed: int = 0):
    """Three angular fans in the plane (around 0, 90 and 180 degrees, +-35 degrees wide) whose norms
    grow 50-fold across each fan. Spherical k-means splits them at the gaps; a mean weighted by the
    norms (what k-means on unnormalised points gives) pulls each centroid toward the long edge of
    its fan and moves the boundary into the next fan; Euclidean k-means groups by norm instead."""
    rng = np.random.default_rng(seed)
    n = 150
    fan = np.repeat(np.arange(3), n)
    offset = rng.uniform(-35.0, 35.0, 3 * n)
    angle = np.deg2rad(90.0 * fan + offset)
    norm = np.exp(np.log(50.0) * (offset + 35.0) / 70.0) * rng.uniform(0.9, 1.1, 3 * n)
    x = norm[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return x.astype(np.float32), fan


def _numpy_spherical_kmeans(x, k, *, n_init=20, n_iter=100, seed=0):
    """Reference: Lloyd on unit vectors, centroids = normalised means, nearest = largest cosine.
    Random-point starts; the restart with the largest total cosine wins."""
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    best, best_score = None, -np.inf
    for _ in range(n_init):
        c = u[rng.choice(len(u), k, replace=False)]
        for _ in range(n_iter):
            lab = np.argmax(u @ c.T, axis=1)
            new = np.stack([u[lab == j].sum(0) if (lab == j).any() else c[j] for j in range(k)])
            new /= np.linalg.norm(new, axis=1, keepdims=True)
            if np.allclose(new, c):
                break
            c = new
        lab = np.argmax(u @ c.T, axis=1)
        score = np.sum(u * c[lab])
        if score > best_score:
            best, best_score = (lab, c), score
    return best


def test_cosine_kmeans_partition_matches_a_numpy_spherical_kmeans():
    x, fan = _fans()
    ref_labels, ref_centroids = _numpy_spherical_kmeans(x, 3)
    assert adjusted_rand_score(ref_labels, fan) == 1.0  # the reference finds the fans
    # Normalisation matters on these data: raw Euclidean k-means and a norm-weighted spherical
    # update both give other partitions.
    assert adjusted_rand_score(np.asarray(ur.kmeans(x, 3, key=0).labels), fan) < 0.6
    res = ur.kmeans(x, 3, key=0, metric="cosine", n_init=3)
    labels, centroids = np.asarray(res.labels), np.asarray(res.centroids)
    assert adjusted_rand_score(labels, ref_labels) == 1.0
    # Same centroids up to the order of the clusters, unit length.
    match = np.argmax(centroids @ ref_centroids.T, axis=1)
    np.testing.assert_allclose(centroids, ref_centroids[match], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    # The router fitted with the default (cosine) metric uses the same partition, also for
    # unnormalised prompts at assignment time.
    router = ur.UniRouter.fit(x, 3, seed=0)
    assert adjusted_rand_score(router.assign(x), fan) == 1.0
    np.testing.assert_array_equal(router.assign(3.0 * x), router.assign(x))


def test_norm_weighted_means_would_move_the_boundary():
    # Guards the test above: Lloyd with norm-weighted means, started from the fans themselves,
    # settles on another partition, so a kernel that skipped the normalisation could not pass it.
    x, fan = _fans()
    labels = fan
    for _ in range(50):
        c = np.stack([x[labels == j].sum(0) for j in range(3)])
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        labels = np.argmax(x @ c.T, axis=1)
    assert (labels != fan).sum() >= 20


# --------------------------------------------------------------------------- budget grids


def _check_increasing_from_zero(lams):
    lams = np.asarray(lams)
    assert lams[0] == 0.0
    assert np.all(np.diff(lams) > 0), "budget grid must increase strictly"


@pytest.mark.parametrize("costs", [[0.1, 0.5, 2.0], [3.0, 1.0, 1.0 + 1e-3, 0.0]])
def test_lambda_grid_increases_and_spans_every_decision(costs):
    lams = ur.lambda_grid(costs, 64)
    _check_increasing_from_zero(lams)
    # At the last budget every error table in [0, 1] routes to the cheapest model; at 0 to the
    # lowest error.
    rng = np.random.default_rng(0)
    psi = rng.uniform(size=(len(costs), 30)).astype(np.float32)
    phi = np.eye(30, dtype=np.float32)
    last = np.asarray(ur.route(phi, psi, costs, float(lams[-1])).choice)
    assert np.all(last == int(np.argmin(costs)))
    first = np.asarray(ur.route(phi, psi, costs, float(lams[0])).choice)
    np.testing.assert_array_equal(first, np.argmin(psi, axis=0))


def _router_and_pool(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(240, 6)).astype(np.float32)
    router = ur.UniRouter.fit(x[:120], 6, seed=0)
    q = (rng.uniform(size=(120, 4)) < np.array([0.4, 0.6, 0.7, 0.9])).astype(np.float32)
    pool = router.represent(x[120:], q, ["a", "b", "c", "d"], [0.1, 0.3, 0.6, 1.0])
    return router, pool, x


def test_uni_router_sweep_default_grid_runs_from_most_accurate_to_cheapest():
    router, pool, x = _router_and_pool()
    curves = router.sweep(x[:120], pool, n_budgets=32)
    _check_increasing_from_zero(curves.lams)
    np.testing.assert_array_equal(curves.lams, ur.lambda_grid(pool.costs, 32))
    cost = curves.mean_cost[0]
    assert np.all(np.diff(cost) <= 1e-6), "mean cost must not rise along the default grid"
    # Ends: lambda = 0 is the most accurate decision per cluster, the last budget the cheapest model.
    at0 = pool.costs[router.route(x[:120], pool, 0.0).index].mean()
    assert cost[0] == pytest.approx(at0, rel=1e-6)
    assert cost[-1] == pytest.approx(pool.costs.min(), rel=1e-6)
    assert cost[0] > cost[-1]


def test_learned_map_sweep_default_grid_runs_from_most_accurate_to_cheapest():
    # The learned (soft) map through the public `learn_map`, `represent` and `sweep` only.
    router, _, x = _router_and_pool()
    rng = np.random.default_rng(1)
    q = (rng.uniform(size=(240, 4)) < np.array([0.4, 0.6, 0.7, 0.9])).astype(np.float32)
    lm = router.learn_map(x[:120], q[:120], x[120:], q[120:], config=ur.LearnedMapConfig(epochs=1))
    pool = lm.represent(x[120:], q[120:], ["a", "b", "c", "d"], [0.1, 0.3, 0.6, 1.0])
    curves = lm.sweep(x[:120], pool, n_budgets=32)
    _check_increasing_from_zero(curves.lams)
    cost = curves.mean_cost[0]
    assert np.all(np.diff(cost) <= 1e-6)
    assert cost[-1] == pytest.approx(pool.costs.min(), rel=1e-6)
    assert cost[0] > cost[-1]


def test_theory_default_lams_increase_and_end_on_the_cheapest_model():
    lams = experiments.default_lams()
    _check_increasing_from_zero(lams)
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(50, 5)).astype(np.float32)
    c = np.array([0.05, 0.2, 0.4, 0.7, 1.0], np.float32)
    pts = bayes.bayes_sweep(p, c, np.ones(5, bool), lams)
    cost = np.asarray(pts.cost)
    assert np.all(np.diff(cost) <= 1e-6)
    assert cost[-1] == pytest.approx(c.min())
    assert cost[0] == pytest.approx(c[p.argmin(axis=1)].mean())


def test_evaluation_cost_grid_runs_from_zero_to_the_priciest_model():
    grid = evaluation.COST_GRID
    assert grid[0] == 0.0 and grid[-1] == 1.0
    assert np.all(np.diff(grid) > 0)
