import numpy as np
import pytest
from scipy.stats import beta

import uniroute_jax as ur
from uniroute_jax._src.onboarding import error_intervals, routing_gain, validation_prompts_needed


def test_intervals_match_scipy_beta():
    counts = np.array([[10.0, 0.0, 3.0, 200.0]])
    errors = np.array([[2.0, 0.0, 3.0, 50.0]])
    res = error_intervals(counts, errors, alpha=1.0, level=0.9)
    o = errors.sum() / counts.sum()
    a, b = errors + o + 0.5, counts - errors + (1 - o) + 0.5
    np.testing.assert_allclose(np.asarray(res.lower), beta.ppf(0.05, a, b), atol=1e-4)
    np.testing.assert_allclose(np.asarray(res.upper), beta.ppf(0.95, a, b), atol=1e-4)
    width = np.asarray(res.upper - res.lower)[0]
    assert width[3] < width[0] < width[1]  # more labels, narrower interval; empty cluster widest


def test_interval_coverage_on_simulated_llms():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, size=(400, 1))
    n = np.full((400, 1), 40.0)
    e = rng.binomial(40, p).astype(float)
    res = error_intervals(n, e, alpha=0.0, level=0.9)
    covered = (np.asarray(res.lower) <= p) & (p <= np.asarray(res.upper))
    assert 0.85 <= covered.mean() <= 0.96


def test_pool_counts_feed_intervals():
    w = ur.synthetic_world(0, n_prompts=600, n_models=2)
    e, q = np.asarray(w.prompts.embeddings), np.asarray(w.quality)
    router = ur.UniRouter.fit(e[:400], 4)
    pool = router.represent(e[400:], q[400:], ["a", "b"], [1.0, 2.0])
    res = error_intervals(pool.counts, pool.error_sums, alpha=router.alpha)
    assert np.all(np.asarray(res.lower) <= pool.psi + 1e-3) and np.all(pool.psi <= np.asarray(res.upper) + 1e-3)


def test_validation_size_formula_and_hoeffding_guarantee():
    size = validation_prompts_needed(0.1, 0.05, 10)
    assert size.per_cluster == int(np.ceil(np.log(2 * 10 / 0.05) / (2 * 0.01)))
    assert size.total == 10 * size.per_cluster
    skewed = validation_prompts_needed(0.1, 0.05, 2, [0.8, 0.2])
    assert skewed.total == int(np.ceil(skewed.per_cluster / 0.2))
    # Empirically: with that many labels per cluster, every estimate is within eps far more than 95%.
    rng = np.random.default_rng(1)
    est = rng.binomial(size.per_cluster, 0.5, size=(2000, 10)) / size.per_cluster
    assert (np.abs(est - 0.5) <= 0.1).all(axis=1).mean() >= 0.95


@pytest.mark.parametrize("call, match", [
    (lambda: validation_prompts_needed(0, 0.05, 3), "eps must be in"),
    (lambda: validation_prompts_needed(0.1, 1.5, 3), "delta must be in"),
    (lambda: validation_prompts_needed(0.1, 0.1, 2, [1.0, 0.0]), "empty cluster"),
    (lambda: error_intervals([[1.0]], [[2.0]]), "must not exceed"),
    (lambda: error_intervals([[1.0]], [[0.0]], level=1.0), "level must be in"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------- routing gain of a pool


def numpy_area(estimates, quality, costs, weights):
    """Area of the routed curve over normalised cost [0, 1]: every `lam` (each pairwise breakpoint
    and either side of it), each unit routed to `argmin estimate + lam cost` (ties: cheaper, then
    lower row), the Pareto front of the points, `q` linear between its knots and flat outside."""
    n_units, m = estimates.shape
    lams = [0.0, 1e9]
    for u in range(n_units):
        for i in range(m):
            for j in range(m):
                if costs[j] > costs[i]:
                    lam = (estimates[u, i] - estimates[u, j]) / (costs[j] - costs[i])
                    if lam > 0:
                        lams += [lam * (1 - 1e-6), lam * (1 + 1e-6)]
    points = set()
    for lam in lams:
        score = estimates + lam * costs[None, :]
        pick = [min(range(m), key=lambda h: (score[u, h], costs[h], h)) for u in range(n_units)]
        points.add((round(sum(weights[u] * costs[pick[u]] for u in range(n_units)), 12),
                    round(sum(weights[u] * quality[u, pick[u]] for u in range(n_units)), 12)))
    front, best = [], -np.inf
    for c, q in sorted(points, key=lambda p: (p[0], -p[1])):
        if q > best:
            front.append((c, q))
            best = q
    xs, qs = np.array([p[0] for p in front]), np.array([p[1] for p in front])
    norm = costs.max()
    grid = np.linspace(0.0, norm, 200_001)
    return np.trapezoid(np.interp(grid, xs, qs), grid) / norm


def numpy_gain(theta, psi, costs, masses):
    w = masses / masses.sum()
    routed = numpy_area(psi.T, 1 - theta.T, costs, w)
    zero = numpy_area((w @ psi.T)[None, :], (w @ (1 - theta.T))[None, :], costs, np.ones(1))
    return routed - zero


def test_routing_gain_matches_numpy():
    import jax.numpy as jnp

    from uniroute_jax._src.onboarding import _gain_one

    rng = np.random.default_rng(5)
    m, k, pad = 5, 4, 3
    padded = lambda x, fill: jnp.asarray(np.concatenate([x, np.full((pad,) + x.shape[1:], fill)]), jnp.float32)
    for _ in range(6):  # clusters of very different traffic: ZeroRouter must weigh them
        psi, theta = rng.uniform(0.1, 0.9, (m, k)), rng.uniform(0.1, 0.9, (m, k))
        costs, masses = rng.uniform(0.1, 1.0, m), rng.dirichlet(np.full(k, 0.5)) + 0.01
        got = float(_gain_one(padded(theta, 0.0), padded(psi, 0.0), padded(costs, 9.0),
                              jnp.asarray(masses / masses.sum(), jnp.float32), jnp.asarray(np.arange(m + pad) < m)))
        assert got == pytest.approx(numpy_gain(theta, psi, costs, masses), abs=2e-4)
    assert numpy_gain(theta, theta, costs, masses) > 0  # routing on the true errors gains
    # Posteriors concentrated at psi: the interval collapses onto the gain routing psi gains at psi.
    big = 1e6
    res = routing_gain(psi * big, (1 - psi) * big, psi, costs, masses, n_draws=64)
    assert res.mean == pytest.approx(numpy_gain(psi, psi, costs, masses), abs=5e-4)
    assert res.upper - res.lower < 2e-3


def test_routing_gain_says_how_many_labels_resolve_it():
    import jax
    import jax.numpy as jnp

    from uniroute_jax._src.onboarding import gain_draws_kernel

    rng = np.random.default_rng(6)
    truth = rng.uniform(0.35, 0.65, (4, 5))
    costs, masses = np.array([0.2, 0.5, 0.7, 1.0]), np.full(5, 0.2)
    n = np.full(truth.shape, 4.0)
    a, b = truth * n + 0.5, (1 - truth) * n + 0.5
    res = routing_gain(a, b, truth, costs, masses, seed=3)
    assert res.lower <= 0 < res.mean and res.labels_per_llm is not None
    draws = lambda extra: np.quantile(np.asarray(gain_draws_kernel(
        jax.random.key(3), *(jnp.asarray(x, jnp.float32) for x in (a, b, truth, costs, masses / masses.sum())),
        jnp.ones(4, bool), jnp.asarray(float(extra)), n_draws=256)), 0.025)
    assert draws(res.labels_per_llm) > 0 >= draws(res.labels_per_llm - 1)
    # With many labels the same estimates are told from ZeroRouter's.
    many = routing_gain(truth * 400 + 0.5, (1 - truth) * 400 + 0.5, truth, costs, masses, seed=3)
    assert many.lower > 0 and many.labels_per_llm is None
