"""Properties every routing rule the library ships must have (hypothesis).

Rules: UniRoute hard (`UniRouter` with a k-means map), UniRoute soft (the same router after
`learn_map`, through its public `represent`, `estimates` and `route` only), K-NN, ZeroRouter, the oracle and the
fixed-pool MLP. Properties, for costs that are all distinct:

* the mean cost of the decisions does not rise with `lambda`;
* an empty pool is refused (or flagged infeasible by the unchecked kernel); a one-model pool
  sends every prompt to that model at every `lambda`;
* the decisions (as model names) do not depend on the order of the models, nor change when a
  model that is never chosen (always wrong and dearest) is added;
* ties go to the cheaper model: a cheaper twin with the same labels replaces its dearer twin.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import uniroute_jax as ur
from uniroute_jax import kernels

PROPS = settings(max_examples=12, deadline=None, derandomize=True, database=None)
N_VAL, N_TEST, N_MODELS, DIM, N_CLUSTERS = 24, 16, 4, 3, 3
NAMES = tuple("abcd")
LAMS = np.array([0.0, 0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5, 3.0, 10.0, 100.0])

_rng = np.random.default_rng(0)
X_VAL = _rng.normal(size=(N_VAL, DIM)).astype(np.float32)
X_TEST = _rng.normal(size=(N_TEST, DIM)).astype(np.float32)
CENTROIDS = _rng.normal(size=(N_CLUSTERS, DIM)).astype(np.float32)
CENTROIDS /= np.linalg.norm(CENTROIDS, axis=1, keepdims=True)

labels_st = hnp.arrays(np.float32, (N_VAL, N_MODELS), elements=st.sampled_from([0.0, 1.0]))
test_labels_st = hnp.arrays(np.float32, (N_TEST, N_MODELS), elements=st.sampled_from([0.0, 1.0]))
costs_st = hnp.arrays(np.float64, (N_MODELS,), elements=st.floats(0.0625, 1.0, width=32), unique=True)
perm_st = st.permutations(range(N_MODELS))


def _never_cost(costs):
    return float(np.max(costs)) + 1.0


def _assert_twin_takes_over(base, got, dearer, lam):
    """With a cheaper twin of `dearer` added, the dearer one is never chosen, every prompt keeps its
    model or moves to the twin, and at lambda = 0 (equal scores) the twin has all of the dearer's."""
    assert dearer not in got
    assert np.all((got == base) | (got == "twin"))
    if lam == 0.0:
        assert np.all(got[base == dearer] == "twin")


def _assert_monotone(mean_costs):
    assert np.all(np.diff(np.asarray(mean_costs)) <= 1e-9), mean_costs


# ------------------------------------------------------------------ rules given as estimate tables
# K-NN, ZeroRouter and the oracle are tables of estimated errors routed by `ur.route`; the table is
# rebuilt from the (permuted / extended) labels, so each property covers estimator and decision.


def _knn(val_q, test_q):
    return np.asarray(ur.knn_estimates(X_TEST, X_VAL, val_q, k=3))


def _zero(val_q, test_q):
    overall = 1.0 - val_q.mean(axis=0)
    return np.repeat(ur.zero_router_estimates(overall), N_TEST, axis=0)


def _oracle(val_q, test_q):
    return ur.oracle_estimates(test_q)


TABLE_RULES = {"knn": _knn, "zero": _zero, "oracle": _oracle}


def _route_table(est, costs, lam, names):
    """Model name chosen per prompt: `argmin_m est[i, m] + lam * costs[m]` via the library's `route`."""
    res = ur.route(np.eye(est.shape[0], dtype=np.float32), est.T, costs, lam)
    return np.asarray(names)[np.asarray(res.choice)]


@pytest.mark.parametrize("rule", TABLE_RULES)
@PROPS
@given(val_q=labels_st, test_q=test_labels_st, costs=costs_st)
def test_table_rules_cost_does_not_rise_with_lambda(rule, val_q, test_q, costs):
    est = TABLE_RULES[rule](val_q, test_q)
    by_name = dict(zip(NAMES, costs))
    _assert_monotone([np.mean([by_name[n] for n in _route_table(est, costs, lam, NAMES)]) for lam in LAMS])


@pytest.mark.parametrize("rule", TABLE_RULES)
@PROPS
@given(val_q=labels_st, test_q=test_labels_st, costs=costs_st, perm=perm_st, lam=st.sampled_from(LAMS))
def test_table_rules_ignore_model_order_and_a_never_chosen_model(rule, val_q, test_q, costs, perm, lam):
    fn = TABLE_RULES[rule]
    base = _route_table(fn(val_q, test_q), costs, lam, NAMES)
    perm = list(perm)
    shuffled = _route_table(fn(val_q[:, perm], test_q[:, perm]), costs[perm], lam, [NAMES[i] for i in perm])
    np.testing.assert_array_equal(shuffled, base)
    add = lambda q: np.concatenate([q, np.zeros((q.shape[0], 1), q.dtype)], axis=1)  # noqa: E731
    wider = _route_table(fn(add(val_q), add(test_q)), np.append(costs, _never_cost(costs)), lam, NAMES + ("never",))
    np.testing.assert_array_equal(wider, base)


@pytest.mark.parametrize("rule", TABLE_RULES)
@PROPS
@given(val_q=labels_st, test_q=test_labels_st, costs=costs_st, j=st.integers(0, N_MODELS - 1),
       lam=st.sampled_from(LAMS))
def test_table_rules_break_ties_toward_the_cheaper_model(rule, val_q, test_q, costs, j, lam):
    fn = TABLE_RULES[rule]
    base = _route_table(fn(val_q, test_q), costs, lam, NAMES)
    twin = lambda q: np.concatenate([q, q[:, j:j + 1]], axis=1)  # noqa: E731
    # The twin comes last (highest index) and is cheaper: the tie rule, not the index, must pick it.
    got = _route_table(fn(twin(val_q), twin(test_q)), np.append(costs, costs[j] / 2), lam, NAMES + ("twin",))
    _assert_twin_takes_over(base, got, NAMES[j], lam)


@pytest.mark.parametrize("rule", TABLE_RULES)
def test_table_rules_one_model_and_empty_pool(rule):
    rng = np.random.default_rng(1)
    val_q = (rng.uniform(size=(N_VAL, 1)) < 0.5).astype(np.float32)
    test_q = (rng.uniform(size=(N_TEST, 1)) < 0.5).astype(np.float32)
    est = TABLE_RULES[rule](val_q, test_q)
    for lam in LAMS:
        assert set(_route_table(est, np.array([0.3]), lam, ("only",))) == {"only"}
    with pytest.raises(ValueError, match="model_mask selects no model"):
        ur.route(np.eye(N_TEST, dtype=np.float32), est.T, [0.3], 0.1, model_mask=[False])
    with pytest.raises(ValueError, match="those pools are empty"):
        ur.sweep(est, ur.make_units(None, costs=[0.3], quality=test_q), [0.3], LAMS, pool_masks=[[False]])
    unchecked = kernels.route_kernel(np.eye(N_TEST, dtype=np.float32), est.T, np.array([0.3], np.float32),
                                np.array([False]), np.float32(0.1))
    assert not bool(unchecked.feasible) and np.all(np.asarray(unchecked.choice) == -1)


# ------------------------------------------------------------------ UniRoute hard: UniRouter


def _hard_router():
    return ur.UniRouter(CENTROIDS)


@PROPS
@given(val_q=labels_st, costs=costs_st)
def test_uniroute_hard_cost_does_not_rise_with_lambda(val_q, costs):
    router = _hard_router()
    pool = router.represent(X_VAL, val_q, NAMES, costs)
    _assert_monotone([costs[router.route(X_TEST, pool, lam).index].mean() for lam in LAMS])
    _assert_monotone(router.sweep(X_TEST, pool, LAMS).mean_cost[0])


@PROPS
@given(val_q=labels_st, costs=costs_st, perm=perm_st, lam=st.sampled_from(LAMS))
def test_uniroute_hard_ignores_model_order_and_a_never_chosen_model(val_q, costs, perm, lam):
    router = _hard_router()
    pool = router.represent(X_VAL, val_q, NAMES, costs)
    base = router.route(X_TEST, pool, lam).model
    shuffled = pool.select([NAMES[i] for i in perm])
    np.testing.assert_array_equal(router.route(X_TEST, shuffled, lam).model, base)
    never = router.represent(X_VAL, np.zeros(N_VAL, np.float32), ["never"], [_never_cost(costs)])
    np.testing.assert_array_equal(router.route(X_TEST, pool + never, lam).model, base)
    np.testing.assert_array_equal(router.route(X_TEST, never + pool, lam).model, base)


@PROPS
@given(val_q=labels_st, costs=costs_st, j=st.integers(0, N_MODELS - 1), lam=st.sampled_from(LAMS))
def test_uniroute_hard_breaks_ties_toward_the_cheaper_model(val_q, costs, j, lam):
    router = _hard_router()
    pool = router.represent(X_VAL, val_q, NAMES, costs)
    base = router.route(X_TEST, pool, lam).model
    twin = router.represent(X_VAL, val_q[:, j], ["twin"], [costs[j] / 2])
    got = router.route(X_TEST, pool + twin, lam).model
    _assert_twin_takes_over(base, got, NAMES[j], lam)


def test_uniroute_hard_one_model_and_empty_pool():
    router = _hard_router()
    pool = router.represent(X_VAL, np.ones(N_VAL, np.float32), ["only"], [0.3])
    for lam in LAMS:
        assert set(router.route(X_TEST, pool, lam).model) == {"only"}
    with pytest.raises(ValueError, match="pool is empty"):
        router.route(X_TEST, ur.Pool.empty(N_CLUSTERS), 0.1)
    with pytest.raises(ValueError, match="pool is empty"):
        router.sweep(X_TEST, ur.Pool.empty(N_CLUSTERS))


# ------------------------------------------------------------------ UniRoute soft: the learned map
# Public methods only (`learn_map`, `represent`, `estimates`, `route`).


@pytest.fixture(scope="module")
def soft_router():
    rng = np.random.default_rng(2)
    q_train = (rng.uniform(size=(N_VAL, 2)) < 0.6).astype(np.float32)
    return _hard_router().learn_map(X_VAL, q_train, X_VAL, q_train, config=ur.LearnedMapConfig(epochs=2))


@PROPS
@given(val_q=labels_st, costs=costs_st)
def test_uniroute_soft_cost_does_not_rise_with_lambda(soft_router, val_q, costs):
    pool = soft_router.represent(X_VAL, val_q, NAMES, costs)
    _assert_monotone([costs[soft_router.route(X_TEST, pool, lam).index].mean() for lam in LAMS])


@PROPS
@given(val_q=labels_st, costs=costs_st, perm=perm_st, lam=st.sampled_from(LAMS))
def test_uniroute_soft_ignores_model_order_and_a_never_chosen_model(soft_router, val_q, costs, perm, lam):
    pool = soft_router.represent(X_VAL, val_q, NAMES, costs)
    base = soft_router.route(X_TEST, pool, lam).model
    perm = list(perm)
    shuffled = soft_router.represent(X_VAL, val_q[:, perm], [NAMES[i] for i in perm], costs[perm])
    np.testing.assert_array_equal(soft_router.route(X_TEST, shuffled, lam).model, base)
    np.testing.assert_allclose(soft_router.estimates(X_TEST, shuffled), soft_router.estimates(X_TEST, pool)[:, perm],
                               atol=1e-6)
    never = soft_router.represent(X_VAL, np.zeros((N_VAL, 1), np.float32), ["never"], [_never_cost(costs)])
    np.testing.assert_array_equal(soft_router.route(X_TEST, pool + never, lam).model, base)


@PROPS
@given(val_q=labels_st, costs=costs_st, j=st.integers(0, N_MODELS - 1), lam=st.sampled_from(LAMS))
def test_uniroute_soft_breaks_ties_toward_the_cheaper_model(soft_router, val_q, costs, j, lam):
    pool = soft_router.represent(X_VAL, val_q, NAMES, costs)
    base = soft_router.route(X_TEST, pool, lam).model
    twin = soft_router.represent(X_VAL, val_q[:, j:j + 1], ["twin"], [costs[j] / 2])
    got = soft_router.route(X_TEST, pool + twin, lam).model
    _assert_twin_takes_over(base, got, NAMES[j], lam)


def test_uniroute_soft_one_model_and_empty_pool(soft_router):
    pool = soft_router.represent(X_VAL, np.ones((N_VAL, 1), np.float32), ["only"], [0.3])
    for lam in LAMS:
        assert set(soft_router.route(X_TEST, pool, lam).model) == {"only"}
    with pytest.raises(ValueError, match="pool is empty"):
        soft_router.route(X_TEST, ur.Pool.empty(N_CLUSTERS), 0.1)


# ------------------------------------------------------------------ fixed pool (MLP)
# A fixed-pool router is trained for one pool, so order and extension are properties of its
# decision rule on its estimates; the one-model edge is a router trained on one LLM.


@pytest.fixture(scope="module")
def fixed_pool_estimates():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(64, DIM)).astype(np.float32)
    q = (rng.uniform(size=(64, N_MODELS)) < np.array([0.3, 0.5, 0.6, 0.8])).astype(np.float32)
    config = ur.FixedPoolConfig(hidden=8, epochs=3)
    four = ur.FixedPoolRouter.fit(x, q, config=config).estimates(X_TEST)
    one = ur.FixedPoolRouter.fit(x, q[:, :1], config=config).estimates(X_TEST)
    return np.asarray(four, np.float32), np.asarray(one, np.float32)


@PROPS
@given(costs=costs_st, perm=perm_st, lam=st.sampled_from(LAMS))
def test_fixed_pool_rule_properties(fixed_pool_estimates, costs, perm, lam):
    est, _ = fixed_pool_estimates
    by_name = dict(zip(NAMES, costs))
    _assert_monotone([np.mean([by_name[n] for n in _route_table(est, costs, x, NAMES)]) for x in LAMS])
    base = _route_table(est, costs, lam, NAMES)
    perm = list(perm)
    np.testing.assert_array_equal(_route_table(est[:, perm], costs[perm], lam, [NAMES[i] for i in perm]), base)
    wider = np.concatenate([est, np.ones((N_TEST, 1), np.float32)], axis=1)
    np.testing.assert_array_equal(_route_table(wider, np.append(costs, _never_cost(costs)), lam, NAMES + ("never",)),
                                  base)
    j = perm[0]
    twin = _route_table(np.concatenate([est, est[:, j:j + 1]], axis=1), np.append(costs, costs[j] / 2), lam,
                        NAMES + ("twin",))
    _assert_twin_takes_over(base, twin, NAMES[j], lam)


def test_fixed_pool_one_model(fixed_pool_estimates):
    _, one = fixed_pool_estimates
    assert one.shape == (N_TEST, 1)
    for lam in LAMS:
        assert set(_route_table(one, np.array([0.3]), lam, ("only",))) == {"only"}
