import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.special import expit

from uniroute_jax._src import estimators as E
from uniroute_jax._src.selection import informative_counts, select_prompts, selection_kernel

K = 5


@functools.lru_cache(maxsize=None)
def _prior():
    rng = np.random.default_rng(0)
    z = rng.normal(size=10)[:, None] + np.array([-1.5, -0.5, 0.0, 0.5, 1.5])[None, :] + 0.5 * rng.normal(size=(10, K))
    n = np.full((10, K), 20.0, np.float32)
    e = rng.binomial(20, expit(z)).astype(np.float32)
    return E.fit_estimator("prior", n, e, n_groups=2), e / n


def numpy_informative_counts(p, ref_psi, masses, available, n):
    """Twin of the greedy: recomputes every candidate's posterior covariance from scratch."""
    f = np.asarray(p.factors, np.float64)
    m = expit(f @ np.asarray(p.v_mean, np.float64) + np.asarray(p.offsets, np.float64))
    g = m * (1 - m)
    own = g / (float(p.kappa) + 1)
    prec0 = np.asarray(p.v_precision, np.float64)
    cov0 = np.linalg.inv(prec0)
    var0 = g * g * np.diag(f @ cov0 @ f.T) + own
    near = np.exp(-(m[None, :] - ref_psi) ** 2 / (2 * var0[None, :])).mean(0)
    weight = masses * (near + 1e-3)

    def risk(counts):
        cov = np.linalg.inv(prec0 + (f * (g * counts)[:, None]).T @ f)
        prior_var = g * g * np.diag(f @ cov @ f.T) + own
        return np.sum(weight * prior_var / (1 + counts * prior_var / g))

    counts = np.zeros(len(m))
    for _ in range(n):
        base = risk(counts)
        gains = [base - risk(counts + np.eye(len(m))[k]) if counts[k] < available[k] else -np.inf
                 for k in range(len(m))]
        if np.max(gains) == -np.inf:
            break
        counts[int(np.argmax(gains))] += 1
    return counts


@pytest.mark.parametrize("n", [1, 7, 25])
def test_informative_counts_match_numpy(n):
    est, ref = _prior()
    masses = np.array([0.4, 0.3, 0.15, 0.1, 0.05], np.float32)
    available = np.array([30, 3, 30, 30, 2], np.float32)
    got = informative_counts(est.params, jnp.asarray(ref), jnp.ones(ref.shape[0], bool), jnp.asarray(masses),
                             jnp.asarray(available), jnp.asarray(n), n_max=25)
    np.testing.assert_array_equal(np.asarray(got), numpy_informative_counts(est.params, ref, masses, available, n))
    assert np.asarray(got).sum() == n and np.all(np.asarray(got) <= available)


def numpy_stratified(clusters, u, masses, n):
    """Divisor apportionment twin: priority (rank-in-cluster + 1/2) / mass, the n smallest."""
    rank = np.array([np.sum((clusters == clusters[i]) & (u < u[i])) for i in range(len(u))])
    prio = (rank + 0.5) / masses[clusters]
    return np.sort(np.argsort(prio, kind="stable")[:n])


@given(st.integers(0, 1000), st.integers(1, 40))
def test_stratified_matches_numpy_and_follows_mass(seed, n):
    rng = np.random.default_rng(seed)
    clusters = rng.integers(0, K, size=40)
    masses = np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32)
    key = jax.random.key(seed)
    mask = selection_kernel(key, jnp.asarray(clusters), jnp.ones(40, bool), jnp.asarray(n), jnp.asarray(masses),
                            _prior()[0].params, jnp.zeros((1, K)), jnp.ones(1, bool), strategy="stratified", n_max=40)
    u = np.asarray(jax.random.uniform(key, (40,)))
    got = np.flatnonzero(np.asarray(mask))
    np.testing.assert_array_equal(got, numpy_stratified(clusters, u, masses, n))
    # where no cluster runs out, every cluster is within one label of its share
    per = np.bincount(clusters[got], minlength=K)
    avail = np.bincount(clusters, minlength=K)
    if np.all(per < avail):
        assert np.all(np.abs(per - n * masses) <= 1.0 + 1e-6)


@pytest.mark.parametrize("strategy", ["random", "stratified", "informative"])
def test_selections_are_nested_across_budgets_under_vmap(strategy):
    est, ref = _prior()
    clusters = jnp.asarray(np.random.default_rng(2).integers(0, K, size=60))
    sel = functools.partial(selection_kernel, strategy=strategy, n_max=30)
    masks = jax.vmap(lambda n: sel(jax.random.key(4), clusters, jnp.ones(60, bool), n, jnp.full(K, 0.2), est.params,
                                   jnp.asarray(ref), jnp.ones(ref.shape[0], bool)))(jnp.asarray([5, 10, 30]))
    masks = np.asarray(masks)
    assert masks.sum(1).tolist() == [5, 10, 30]
    assert np.all(masks[0] <= masks[1]) and np.all(masks[1] <= masks[2])


@pytest.mark.parametrize("strategy", ["random", "stratified", "informative"])
def test_padding_candidates_are_never_chosen(strategy):
    est, ref = _prior()
    rng = np.random.default_rng(3)
    clusters = rng.integers(0, K, size=50)
    valid = np.arange(50) < 20
    mask = np.asarray(selection_kernel(jax.random.key(0), jnp.asarray(clusters), jnp.asarray(valid), jnp.asarray(30),
                                       jnp.full(K, 0.2), est.params, jnp.asarray(ref), jnp.ones(10, bool),
                                       strategy=strategy, n_max=30))
    assert mask.sum() == 20 and not mask[~valid].any()
    if strategy == "informative":  # the greedy counts are those of the unpadded candidates
        plain = np.asarray(selection_kernel(jax.random.key(0), jnp.asarray(clusters[:20]), jnp.ones(20, bool),
                                            jnp.asarray(30), jnp.full(K, 0.2), est.params, jnp.asarray(ref),
                                            jnp.ones(10, bool), strategy=strategy, n_max=30))
        np.testing.assert_array_equal(np.bincount(clusters[:20][plain], minlength=K),
                                      np.bincount(clusters[mask], minlength=K))


def test_informative_follows_mass_when_clusters_are_otherwise_alike():
    # A prior under which every cluster is alike: labels go by traffic share, none to a negligible one.
    z = jnp.zeros(())
    params = E.EstimatorParams(z, z + 0.3, jnp.zeros(K, jnp.int32), jnp.ones(3), jnp.ones((K, 1)), jnp.zeros(K),
                               jnp.zeros(1), jnp.eye(1), z + 5.0)
    est = E.Estimator("prior", params)
    masses = np.array([0.5, 0.3, 0.15, 0.05, 1e-5])
    clusters = np.repeat(np.arange(K), 20)
    idx = select_prompts(clusters, 12, strategy="informative", cluster_masses=masses, estimator=est,
                         reference_psi=np.full((3, K), 0.5))
    per = np.bincount(clusters[idx], minlength=K)
    assert np.all(np.diff(per) <= 0) and per[0] > per[3] and per[4] == 0


def test_select_prompts_public_entry():
    est, ref = _prior()
    clusters = np.random.default_rng(0).integers(0, K, size=30)
    for strategy in ("random", "stratified", "informative"):
        idx = select_prompts(clusters, 12, strategy=strategy, estimator=est, reference_psi=ref, seed=1)
        assert len(idx) == 12 and len(set(idx.tolist())) == 12 and idx.min() >= 0 and idx.max() < 30
        np.testing.assert_array_equal(idx, select_prompts(clusters, 12, strategy=strategy, estimator=est,
                                                          reference_psi=ref, seed=1))
    with pytest.raises(ValueError, match="strategy"):
        select_prompts(clusters, 3, strategy="greedy")
    with pytest.raises(ValueError, match="n must be"):
        select_prompts(clusters, 31)
    with pytest.raises(ValueError, match="n"):
        select_prompts(clusters, 0)
    with pytest.raises(ValueError, match="estimator"):
        select_prompts(clusters, 3, strategy="informative", reference_psi=ref)
    with pytest.raises(ValueError, match="reference_psi"):
        select_prompts(clusters, 3, strategy="informative", estimator=est)
    with pytest.raises(ValueError, match="candidate_clusters"):
        select_prompts(np.array([0, 9]), 1, n_clusters=K)
    with pytest.raises(ValueError, match="cluster_masses"):
        select_prompts(clusters, 3, n_clusters=K, cluster_masses=np.zeros(K))
