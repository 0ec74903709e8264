import numpy as np
import pytest
from scipy.stats import beta

import uniroute_jax as ur
from uniroute_jax._src.onboarding import error_intervals, validation_prompts_needed


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
