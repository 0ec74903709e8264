import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import betaln, expit

from uniroute_jax._src import estimators as E
from uniroute_jax._src.error_vectors import error_vectors_kernel

R, K = 12, 6


def _population(seed=0, r=R, k=K, n_range=(4, 25)):
    """Represented LLMs with an ability and a cluster profile: counts and error sums [r, k]."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=r)[:, None] + rng.normal(size=k)[None, :] + 0.6 * rng.normal(size=(r, k))
    n = rng.integers(*n_range, size=(r, k)).astype(np.float32)
    e = rng.binomial(n.astype(int), expit(z)).astype(np.float32)
    cents = rng.normal(size=(k, 4)).astype(np.float32)
    return n, e, cents


@functools.lru_cache(maxsize=None)
def _fitted():
    n, e, cents = _population()
    return E.fit_estimator("prior", n, e, centroids=cents, cluster_masses=n.sum(0))


def _with(method):
    return E.Estimator(method, _fitted().params)


# ------------------------------------------------------------------------- NumPy twins


def numpy_estimate(method, p, counts, sums):
    """Loop-by-loop twin of every estimator for one LLM, from the fitted numbers."""
    K_ = counts.shape[0]
    n_tot, e_tot = counts.sum(), sums.sum()
    overall = e_tot / n_tot if n_tot > 0 else float(p.population_error)
    if method == "mean":
        prior, s = np.full(K_, overall), np.zeros(K_)
    elif method == "shrinkage":
        prior, s = np.full(K_, overall), np.full(K_, float(p.alpha))
    elif method == "hierarchical":
        t0, t1, t2 = (float(x) for x in p.strengths)
        root = (e_tot + t0 * float(p.population_error)) / (n_tot + t0)
        groups = np.asarray(p.groups)
        prior = np.zeros(K_)
        for k in range(K_):
            in_g = groups == groups[k]
            prior[k] = (sums[in_g].sum() + t1 * root) / (counts[in_g].sum() + t1)
        s = np.full(K_, t2)
    elif not bool(p.use_prior):  # the prior did not beat the shrinkage rule
        prior, s = np.full(K_, overall), np.full(K_, float(p.alpha))
    else:
        raise ValueError("the population prior's twin is numpy_prior")
    denom = counts + s
    psi = np.where(denom > 0, (sums + s * prior) / np.where(denom > 0, denom, 1), prior)
    return psi, prior


def numpy_prior(p, counts, sums, rule=None):
    """Twin of the population prior of one LLM: each cluster predicted from the other clusters'
    labels (plain Newton MAP), its variance from the Laplace covariance and the cluster's factor
    covariance; at every tau of the grid the Beta matching the moments of sigmoid of that Gaussian
    plus tau^2 (a 160-point Gauss-Hermite rule; the kernel uses 24), capped at the population's labels; mixed over tau by the learnt weights
    times each cluster's own Beta-Binomial likelihood. `rule`: `(nodes, weights)` of another
    quadrature (the kernel's 24 points, say). Returns `(psi, mean, total)` of the posterior."""
    gh_x, gh_w = (GH_X, GH_W) if rule is None else rule
    f, b = np.asarray(p.factors, np.float64), np.asarray(p.offsets, np.float64)
    mu, prec = np.asarray(p.v_mean, np.float64), np.asarray(p.v_precision, np.float64)
    fcov, log_pi = np.asarray(p.factor_cov, np.float64), np.asarray(p.tau_weights, np.float64)
    scale = 1.0 / (1.0 - E.SHARED_PROMPT_CORRELATION)
    cap = np.maximum(np.asarray(p.support, np.float64) * scale, 1e-3)
    K_ = counts.shape[0]
    psi, mean, total = np.zeros(K_), np.zeros(K_), np.zeros(K_)
    for k in range(K_):
        c, e = counts.copy(), sums.copy()
        c[k] = e[k] = 0.0  # the cluster's own labels never enter its prediction
        v = mu.copy()
        for _ in range(100):  # plain Newton to convergence
            m = expit(f @ v + b)
            grad = f.T @ (e - c * m) - prec @ (v - mu)
            hess = (f * (c * m * (1 - m))[:, None]).T @ f + prec
            v = v + np.linalg.solve(hess, grad)
        m = expit(f @ v + b)
        cov_v = np.linalg.inv((f * (c * m * (1 - m))[:, None]).T @ f + prec)
        g = np.r_[1.0, v[1:]]
        z, var = f[k] @ v + b[k], f[k] @ cov_v @ f[k] + g @ fcov[k] @ g
        n_k, e_k = counts[k] * scale, sums[k] * scale
        logw, psi_t, a_t, b_t = [], [], [], []
        for t, tau in enumerate(E.TAU_GRID.astype(np.float64)):
            sd = np.sqrt(var + tau ** 2)
            mom = lambda j: gh_w @ expit(z + sd * gh_x) ** j
            pm = np.clip(mom(1), 1e-3, 1 - 1e-3)
            s = np.clip(pm * (1 - pm) / max(mom(2) - mom(1) ** 2, 1e-12) - 1, 1e-3, E.STRENGTH_GRID[-1])
            s = min(s, cap[k])
            ll = 0.0
            if counts[k] > 0:
                ll = betaln(e_k + s * pm, n_k - e_k + s * (1 - pm)) - betaln(s * pm, s * (1 - pm))
            logw.append(log_pi[t] + ll)
            psi_t.append((e_k + s * pm) / (n_k + s))
            a_t.append(e_k + s * pm + 0.5)
            b_t.append(n_k - e_k + s * (1 - pm) + 0.5)
        w = np.exp(np.array(logw) - max(logw))
        w /= w.sum()
        a_t, b_t = np.array(a_t), np.array(b_t)
        m_t = a_t / (a_t + b_t)
        psi[k] = w @ np.array(psi_t)
        mean[k] = w @ m_t
        spread = w @ (m_t * (1 - m_t) / (a_t + b_t + 1) + (m_t - mean[k]) ** 2)
        total[k] = mean[k] * (1 - mean[k]) / spread - 1  # a + b of the Beta with that mean and variance
    return psi, mean, total


GH_X, GH_W = np.polynomial.hermite_e.hermegauss(160)
GH_W = GH_W / GH_W.sum()

counts_st = hnp.arrays(np.int32, (K,), elements=st.integers(0, 12))


@given(counts_st, st.integers(0, 10_000), st.sampled_from(E.METHODS))
def test_every_estimator_matches_numpy(counts, seed, method):
    rng = np.random.default_rng(seed)
    n = counts.astype(np.float32)
    e = rng.binomial(counts, rng.uniform(size=K)).astype(np.float32)
    got = _with(method).estimate_full(n, e)
    if method == "prior":
        p = _fitted().params
        assert bool(p.use_prior)  # this population's prior beats the shrinkage rule: checked
        # The one Beta the estimate reports has the mixture posterior's mean and variance: on the
        # kernel's own 24-point rule to float32 rounding, and on a 160-point rule within that
        # rule's error (~1e-3 in the means at the grid's widest tau, 8 logits; the concentration
        # comes from a variance, a difference of moments, and is good to ~1%).
        a, b = np.asarray(got.a[0], np.float64), np.asarray(got.b[0], np.float64)
        nodes, weights = np.polynomial.hermite_e.hermegauss(24)
        for rule, atol, rtol in (((nodes, weights / weights.sum()), 2e-5, 2e-4), (None, 2.5e-3, 1.5e-2)):
            psi, mean, total = numpy_prior(p, n.astype(np.float64), e.astype(np.float64), rule)
            np.testing.assert_allclose(a / (a + b), mean, atol=atol)
            np.testing.assert_allclose(a + b, total, rtol=rtol)
            np.testing.assert_allclose(np.asarray(got.psi[0]), psi, atol=atol)
        return
    else:
        psi, prior = numpy_estimate(method, _fitted().params, n.astype(np.float64), e.astype(np.float64))
        np.testing.assert_allclose(np.asarray(got.prior[0]), prior, atol=2e-4)
    np.testing.assert_allclose(np.asarray(got.psi[0]), psi, atol=2e-4)


def test_shrinkage_reproduces_error_vectors_kernel():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, K, size=40)
    q = rng.integers(0, 2, size=(40, 5)).astype(np.float32)
    mask = rng.uniform(size=(40, 5)) < 0.7
    ref = error_vectors_kernel(jnp.asarray(labels), jnp.asarray(q), jnp.asarray(mask), jnp.asarray(1.0), n_clusters=K)
    counts, sums = E.labels_to_counts(labels, np.where(mask, q, np.nan), n_clusters=K)
    np.testing.assert_allclose(counts, np.asarray(ref.counts), atol=1e-6)
    np.testing.assert_allclose(_with("shrinkage").estimate(counts, sums), np.asarray(ref.psi), atol=1e-6)


def numpy_loglik(errors, counts, prior, weight, s):
    prior = np.clip(prior, 1e-3, 1 - 1e-3)
    return np.sum(weight * (betaln(errors + s * prior, counts - errors + s * (1 - prior)) - betaln(s * prior, s * (1 - prior))))


def numpy_best_strength(errors, counts, prior, weight):
    ll = [numpy_loglik(errors, counts, prior, weight, s) for s in E.STRENGTH_GRID.astype(np.float64)]
    return E.STRENGTH_GRID[int(np.argmax(ll))]


@pytest.mark.parametrize("spread", [0.1, 1.5])
def test_empirical_bayes_strength_matches_numpy_and_tracks_spread(spread):
    rng = np.random.default_rng(1)
    prior = np.full((40, 8), 0.3)
    p = expit(np.log(0.3 / 0.7) + spread * rng.normal(size=prior.shape))
    n = np.full(prior.shape, 30.0)
    e = rng.binomial(30, p).astype(np.float64)
    got = float(E._best_strength(jnp.asarray(e, jnp.float32), jnp.asarray(n, jnp.float32),
                                 jnp.asarray(prior, jnp.float32), jnp.ones(prior.shape)))
    best = numpy_best_strength(e, n, prior, np.ones(prior.shape))
    # float32 flattens the likelihood's top: the choice must be as likely as the float64 optimum.
    ll = functools.partial(numpy_loglik, e, n, prior, np.ones(prior.shape))
    assert ll(float(got)) == pytest.approx(ll(float(best)), abs=0.05)
    # Little spread between LLMs -> strong pooling; a wide spread -> weak pooling.
    assert (got > 50) if spread == 0.1 else (got < 10)


def test_hierarchy_strengths_match_numpy_leave_one_out():
    n, e, _ = _population(5)
    p = _fitted().params
    groups = np.asarray(p.groups)
    got = np.asarray(E._fit_hierarchy(jnp.asarray(n), jnp.asarray(e), jnp.ones(R, bool), jnp.asarray(groups),
                                      p.population_error))
    pop = float(p.population_error)
    n, e = n.astype(np.float64), e.astype(np.float64)
    nh, eh = n.sum(1), e.sum(1)
    t0 = numpy_best_strength(eh, nh, (eh.sum() - eh) / (nh.sum() - nh), np.ones(R))
    root = (eh + t0 * pop) / (nh + t0)
    ng = np.stack([[n[h, groups == g].sum() for g in range(K)] for h in range(R)])
    eg = np.stack([[e[h, groups == g].sum() for g in range(K)] for h in range(R)])
    t1 = numpy_best_strength(eg, ng, (eh[:, None] - eg + t0 * pop) / (nh[:, None] - ng + t0), (ng > 0).astype(float))
    par = (eg[:, groups] - e + t1 * root[:, None]) / (ng[:, groups] - n + t1)
    t2 = numpy_best_strength(e, n, par, (n > 0).astype(float))
    np.testing.assert_allclose(got, [t0, t1, t2], rtol=0.15)  # neighbouring grid points at most


# ------------------------------------------------------------------- jit / vmap / padding


def test_padded_reference_rows_change_nothing():
    n, e, cents = _population(2)
    key, masses, alpha = jax.random.key(0), jnp.asarray(n.sum(0)), jnp.asarray(1.0)
    fit = functools.partial(E.fit_kernel, n_groups=2, rank=2)
    plain = fit(key, jnp.asarray(n), jnp.asarray(e), jnp.ones(R, bool), jnp.asarray(cents), masses, alpha)
    junk = np.full((3, K), 7.0, np.float32)
    padded = fit(key, jnp.asarray(np.vstack([n, junk])), jnp.asarray(np.vstack([e, junk * 0.5])),
                 jnp.asarray(np.r_[np.ones(R, bool), np.zeros(3, bool)]), jnp.asarray(cents), masses, alpha)
    for field in ("population_error", "strengths", "kappa", "tau_weights", "v_mean", "offsets"):
        np.testing.assert_allclose(np.asarray(getattr(padded, field)), np.asarray(getattr(plain, field)),
                                   rtol=2e-3, atol=2e-3, err_msg=field)


@pytest.mark.parametrize("method", E.METHODS)
def test_vmap_over_models_and_fits_equals_one_at_a_time(method):
    n, e, _ = _population(4)
    p = _fitted().params
    batch = E.estimate_kernel(p, jnp.asarray(n), jnp.asarray(e), method=method).psi
    for h in (0, 5):
        one = E.estimate_kernel(p, jnp.asarray(n[h:h + 1]), jnp.asarray(e[h:h + 1]), method=method).psi
        # float32 Newton solves batched or not round differently: agreement to 1e-4
        np.testing.assert_allclose(np.asarray(batch[h]), np.asarray(one[0]), atol=1e-4)
    # vmap over two fitted parameter sets (as the study does over trials)
    two = jax.tree.map(lambda a: jnp.stack([a, a]), p)
    out = jax.vmap(lambda q: E.estimate_kernel(q, jnp.asarray(n), jnp.asarray(e), method=method).psi)(two)
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(batch), atol=1e-4)


# ---------------------------------------------------------------------------- properties


@given(counts_st, st.integers(0, 10_000), st.sampled_from(E.METHODS[1:]))
def test_shrunk_estimate_lies_between_cluster_mean_and_its_prior(counts, seed, method):
    rng = np.random.default_rng(seed)
    n = counts.astype(np.float32)
    e = rng.binomial(counts, rng.uniform(size=K)).astype(np.float32)
    est = _with(method).estimate_full(n, e)
    psi, prior = np.asarray(est.psi[0]), np.asarray(est.prior[0])
    has = n > 0
    mean = e[has] / n[has]
    lo, hi = np.minimum(mean, prior[has]), np.maximum(mean, prior[has])
    assert np.all(psi[has] >= lo - 1e-5) and np.all(psi[has] <= hi + 1e-5)
    np.testing.assert_allclose(psi[~has], prior[~has], atol=1e-6)  # an empty cluster is its prior


@given(hnp.arrays(np.float32, (K,), elements=st.floats(0.0625, 0.9375, width=32)), st.sampled_from(E.METHODS))
def test_many_labels_converge_to_the_cluster_mean(rates, method):
    n = np.full(K, 1e6, np.float32)
    e = np.round(rates * n)
    psi = _with(method).estimate(n, e)[0]
    np.testing.assert_allclose(psi, e / n, atol=5e-3)


@given(hnp.arrays(np.float32, (K,), elements=st.floats(0, 1e4, width=32)), st.floats(0, 1), st.sampled_from(E.METHODS))
def test_estimates_stay_in_unit_interval(counts, frac, method):
    e = np.floor(counts * frac)
    psi = _with(method).estimate(counts, e)
    assert np.all(np.isfinite(psi)) and np.all((psi >= 0) & (psi <= 1))


# The population prior's Beta has the mean of sigmoid of an uncertain logit, not the sigmoid of
# its mean, so labels at the latter do move it; its numbers are checked against `numpy_prior`.
@pytest.mark.parametrize("method", ["shrinkage", "hierarchical"])
def test_labels_that_agree_with_the_prior_do_not_move_it(method):
    est = _with(method)
    p = est.params
    n = np.array([3, 10, 0, 7, 40, 1], np.float32)
    target = np.full(K, float(p.population_error))  # root, groups and clusters agree
    psi = est.estimate(n, n * target)[0]
    np.testing.assert_allclose(psi, target, atol=2e-4)


@pytest.mark.parametrize("n_labels", [1, 5, 20])
@pytest.mark.parametrize("method", E.METHODS)
def test_few_labels_give_finite_estimates_and_intervals(n_labels, method):
    rng = np.random.default_rng(n_labels)
    clusters = rng.integers(0, K, size=n_labels)
    n = np.bincount(clusters, minlength=K).astype(np.float32)
    e = np.bincount(clusters, weights=rng.integers(0, 2, size=n_labels), minlength=K).astype(np.float32)
    iv = _with(method).intervals(n, e)
    lower, upper, psi = (np.asarray(x) for x in (iv.lower, iv.upper, iv.mean))
    assert np.all(np.isfinite(psi)) and np.all((psi >= 0) & (psi <= 1))
    assert np.all((lower >= 0) & (lower < upper) & (upper <= 1))


def test_population_prior_beats_plain_means_with_few_labels():
    # An LLM drawn like the represented ones, 2 labels per cluster: the prior's error is smaller.
    n_ref, e_ref, cents = _population(7, r=40, k=K, n_range=(30, 60))
    est = E.fit_estimator("prior", n_ref, e_ref, centroids=cents)
    mean = E.fit_estimator("mean", n_ref, e_ref)
    rng = np.random.default_rng(8)
    errs = {"prior": [], "mean": []}
    col = np.random.default_rng(7)
    col.normal(size=40)
    cluster_effect = col.normal(size=K)  # the same cluster profile as the population
    for _ in range(200):
        p = expit(rng.normal() + cluster_effect + 0.6 * rng.normal(size=K))
        n = np.full(K, 2.0, np.float32)
        e = rng.binomial(2, p).astype(np.float32)
        errs["prior"].append(np.mean((est.estimate(n, e)[0] - p) ** 2))
        errs["mean"].append(np.mean((mean.estimate(n, e)[0] - p) ** 2))
    assert np.mean(errs["prior"]) < 0.8 * np.mean(errs["mean"])


# ---------------------------------------------------------------------------- validation


def test_inputs_are_validated_by_name():
    n, e, _ = _population()
    with pytest.raises(ValueError, match="method"):
        E.fit_estimator("median", n, e)
    with pytest.raises(ValueError, match="reference_error_sums"):
        E.fit_estimator("mean", n, e + 100)
    with pytest.raises(ValueError, match="reference_counts"):
        E.fit_estimator("prior", np.zeros((0, K)), np.zeros((0, K)))
    with pytest.raises(ValueError, match="cluster_masses"):
        E.fit_estimator("mean", n, e, cluster_masses=np.ones(K + 1))
    with pytest.raises(ValueError, match="n_groups"):
        E.fit_estimator("hierarchical", n, e, n_groups=K + 1)
    est = _with("prior")
    with pytest.raises(ValueError, match="counts"):
        est.estimate(np.ones(K + 1), np.zeros(K + 1))
    with pytest.raises(ValueError, match="error_sums"):
        est.estimate(np.ones(K), np.full(K, 2.0))
    with pytest.raises(ValueError, match="level"):
        est.intervals(np.ones(K), np.zeros(K), level=1.5)
    with pytest.raises(ValueError, match="extra_counts and extra_error_sums"):
        E.fit_estimator("prior", n, e, extra_counts=n)
    with pytest.raises(ValueError, match="extra_counts"):
        E.fit_estimator("prior", n, e, extra_counts=n[:, :-1], extra_error_sums=e[:, :-1])
    with pytest.raises(ValueError, match="extra_error_sums"):
        E.fit_estimator("prior", n, e, extra_counts=n, extra_error_sums=n + 1)
    # mean / shrinkage need no represented LLM
    assert E.fit_estimator("shrinkage", np.zeros((0, K)), np.zeros((0, K))).estimate(np.ones(K), np.zeros(K)).shape == (1, K)


def test_extra_labels_enter_the_factors_only():
    # Labels of the represented LLMs on other prompts (a trial's training prompts): the factors are
    # those of a fit on all the labels together, the strengths those of a fit on the reference
    # labels alone (the prompts a new LLM is labelled on).
    n, e, cents = _population()
    xn, xe, _ = _population(seed=1, n_range=(20, 60))
    fit = lambda *a, **k: E.fit_estimator("prior", *a, centroids=cents, cluster_masses=n.sum(0), **k).params
    with_extra, alone, pooled = fit(n, e, extra_counts=xn, extra_error_sums=xe), fit(n, e), fit(n + xn, e + xe)
    np.testing.assert_allclose(with_extra.factors, pooled.factors, atol=1e-6)
    np.testing.assert_allclose(with_extra.offsets, pooled.offsets, atol=1e-6)
    assert np.abs(with_extra.factors - alone.factors).max() > 1e-2
    assert float(with_extra.population_error) == float(alone.population_error)
    np.testing.assert_array_equal(with_extra.strengths, alone.strengths)
    assert float(with_extra.kappa) != float(pooled.kappa)


# ------------------------------------------------------------------ population size and support


def _thin_population(rng, r, n_labels, k=10):
    """`r` LLMs with cluster effects, each labelled on `n_labels` prompts spread over `k` clusters."""
    cl = rng.normal(size=k)
    z = rng.normal(size=r)[:, None] + cl[None, :] + 0.5 * rng.normal(size=(r, k))
    counts = np.stack([np.bincount(rng.integers(0, k, n_labels), minlength=k) for _ in range(r)]).astype(np.float32)
    return counts, rng.binomial(counts.astype(int), expit(z)).astype(np.float32)


@pytest.mark.parametrize("r", [2, 3])
def test_prior_falls_to_nothing_for_a_small_thinly_labelled_pool(r):
    # 2-3 LLMs with 20 labels each (2 per cluster): the prior weighs no more than the shrinkage rule
    # (1 pseudo-label), or is that rule; a population of 12 LLMs with 200 labels each supports more.
    rng = np.random.default_rng(r)
    for _ in range(3):
        est, rows = E.estimate_rows("prior", *_thin_population(rng, r, 20))
        assert est.used == "shrinkage" or rows.strength.mean() <= 1.5, rows.strength.mean()
    est, rows = E.estimate_rows("prior", *_thin_population(rng, 12, 200))
    assert est.used == "prior" and rows.strength.mean() > 5


def test_represent_new_fits_its_prior_on_the_pool_rows_only():
    from uniroute_jax._src.pool import Pool

    n, e, _ = _population(9, r=8)
    pool = Pool(tuple(f"m{i}" for i in range(8)), np.ones(8), np.full(n.shape, 0.5), n, e)
    rng = np.random.default_rng(10)
    new_n = rng.integers(0, 6, size=(1, K)).astype(np.float32)
    new_e = np.floor(new_n * 0.8)
    new = Pool(("new",), [1.0], np.full((1, K), 0.5), new_n, new_e)
    got, _ = E.represent_new(pool, new, "prior")
    masses = n.sum(0) + new_n.sum(0) + 1e-3
    reference = E.fit_estimator("prior", n, e, cluster_masses=masses)
    assert reference.used == "prior"
    np.testing.assert_allclose(got.psi, reference.estimate(new_n, new_e), atol=1e-6)
    # The check can tell: a prior fitted with the new LLM among the pool's rows gives other rows.
    leaked = E.fit_estimator("prior", np.vstack([n, new_n]), np.vstack([e, new_e]), cluster_masses=masses)
    assert np.abs(leaked.estimate(new_n, new_e) - got.psi).max() > 1e-3


def test_prior_counts_for_no_more_than_the_labels_behind_it():
    # LLMs that follow the population model closely, with 2 labels each in cluster 0 and 60 in the
    # others: the model would trust its prediction for cluster 0 strongly, but the population knows
    # that cluster from 2 labels per LLM, and its prior weighs at most that many (effective) labels.
    rng = np.random.default_rng(4)
    r, k = 12, 6
    z = rng.normal(size=r)[:, None] + rng.normal(size=k)[None, :] + 0.05 * rng.normal(size=(r, k))
    counts = np.full((r, k), 60.0, np.float32)
    counts[:, 0] = 2.0
    errors = rng.binomial(counts.astype(int), expit(z)).astype(np.float32)
    est, rows = E.estimate_rows("prior", counts, errors)
    assert est.used == "prior"
    support = counts.sum(0) / r / (1 - E.SHARED_PROMPT_CORRELATION)  # every other LLM has the same labels
    assert np.all(rows.strength <= support[None, :] * (1 + 1e-4))
    assert rows.strength[:, 1:].mean() > 5 * support[0]  # where labels back it, the prior is strong
