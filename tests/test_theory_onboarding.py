"""theory.onboarding: exact excess risk of onboarding new LLMs with each estimator."""

import jax.numpy as jnp
import numpy as np
import pytest

from theory import onboarding
from uniroute_jax._src.estimators import METHODS


def numpy_cluster_risk(psi_used, psi_true, weights, costs, lams):
    out = []
    for lam in lams:
        risk = 0.0
        for k in range(psi_true.shape[1]):
            h = int(np.argmin(psi_used[:, k] + lam * costs))
            risk += weights[k] * (psi_true[h, k] + lam * costs[h])
        out.append(risk)
    return np.array(out)


def test_cluster_risk_matches_numpy_and_true_errors_are_optimal():
    rng = np.random.default_rng(0)
    psi_true = rng.uniform(size=(5, 7)).astype(np.float32)
    psi_used = np.clip(psi_true + 0.2 * rng.normal(size=psi_true.shape), 0, 1).astype(np.float32)
    w = rng.dirichlet(np.ones(7)).astype(np.float32)
    costs = rng.uniform(size=5).astype(np.float32)
    lams = onboarding.LAMS
    got = np.asarray(onboarding.cluster_risk(jnp.asarray(psi_used), jnp.asarray(psi_true), jnp.asarray(w),
                                             jnp.asarray(costs), jnp.asarray(lams)))
    np.testing.assert_allclose(got, numpy_cluster_risk(psi_used, psi_true, w, costs, lams), rtol=1e-5)
    best = np.asarray(onboarding.cluster_risk(jnp.asarray(psi_true), jnp.asarray(psi_true), jnp.asarray(w),
                                              jnp.asarray(costs), jnp.asarray(lams)))
    assert np.all(best <= got + 1e-6)


@pytest.fixture(scope="module")
def small_study():
    return onboarding.onboarding_study(0, budgets=(2, 20, 20000), n_instances=3, n_clusters=4, n_ref=6, n_new=2,
                                       n_ref_labels=200, n_pop=300)


def test_excess_risk_is_nonnegative_and_vanishes_with_many_labels(small_study):
    assert small_study.excess.shape == (len(METHODS), 3)
    assert np.all(small_study.excess >= -1e-6)
    # 20,000 labels per new LLM: every estimator is the cluster mean, the router the best cluster router.
    assert np.all(small_study.excess[:, -1] < 2e-3)
    assert np.all(small_study.excess[:, 0] >= small_study.excess[:, -1] - 1e-6)


def test_budgets_are_validated():
    with pytest.raises(ValueError, match="budgets"):
        onboarding.onboarding_study(budgets=())
