import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import uniroute_jax as ur
from uniroute_jax._src.routing import route_kernel, sweep_kernel

N, K, M, B = 10, 3, 4, 6
LAMS = np.array([0.0, 0.1, 0.3, 1.0, 3.0, 30.0], np.float32)


def numpy_route(phi, psi, costs, mask, lam):
    """Reference twin: lexicographic (score, cost, index) minimum over pool models."""
    out = []
    for row in phi:
        cands = [(float(np.float32(row @ psi[m] + lam * costs[m])), costs[m], m) for m in range(len(costs)) if mask[m]]
        out.append(min(cands)[2] if cands else -1)
    return np.array(out)


def numpy_sweep(estimates, weight, q_sums, c_sums, costs, masks, lams):
    """Per-unit loop over pools and budgets: how a plain implementation would do it."""
    cost = np.zeros((len(masks), len(lams)))
    qual = np.zeros_like(cost)
    for p, mask in enumerate(masks):
        for b, lam in enumerate(lams):
            for u in range(len(weight)):
                cands = [(float(np.float32(estimates[u, m] + np.float32(lam) * costs[m])), costs[m], m)
                         for m in range(len(costs)) if mask[m]]
                m = min(cands)[2]
                cost[p, b] += c_sums[u, m]
                qual[p, b] += q_sums[u, m]
    return cost / weight.sum(), qual / weight.sum()


psi_st = hnp.arrays(np.float32, (M, K), elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9]))
costs_st = hnp.arrays(np.float32, (M,), elements=st.sampled_from([0.1, 0.2, 0.5, 1.0, 2.0]))
mask_st = hnp.arrays(bool, (M,)).filter(lambda m: m.any())
labels_st = hnp.arrays(np.int32, (N,), elements=st.integers(0, K - 1))


@given(labels_st, psi_st, costs_st, mask_st, st.sampled_from(list(LAMS)))
def test_route_matches_numpy_twin(labels, psi, costs, mask, lam):
    phi = np.eye(K, dtype=np.float32)[labels]
    got = ur.route(phi, psi, costs, lam, model_mask=mask)
    np.testing.assert_array_equal(np.asarray(got.choice), numpy_route(phi, psi, costs, mask, lam))


@given(labels_st, psi_st, costs_st, hnp.arrays(bool, (2, M)).filter(lambda m: m.any(axis=1).all()),
       hnp.arrays(np.float32, (N, M), elements=st.sampled_from([0.0, 1.0])))
def test_sweep_matches_numpy_twin(labels, psi, costs, masks, quality):
    units = ur.make_units(labels, n_units=K, quality=quality, costs=costs)
    res = ur.sweep(psi.T, units, costs, LAMS, pool_masks=masks)
    ref_cost, ref_q = numpy_sweep(psi.T, np.asarray(units.weight), np.asarray(units.quality_sums),
                                  np.asarray(units.cost_sums), costs, masks, LAMS)
    np.testing.assert_allclose(np.asarray(res.mean_cost), ref_cost, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(res.mean_quality), ref_q, atol=1e-6)


@given(labels_st, psi_st, costs_st, hnp.arrays(np.float32, (N, M), elements=st.sampled_from([0.0, 1.0])))
def test_cluster_units_equal_prompt_units(labels, psi, costs, quality):
    """Deciding per cluster and weighting by cluster sums == deciding per prompt."""
    per_cluster = ur.sweep(psi.T, ur.make_units(labels, n_units=K, quality=quality, costs=costs), costs, LAMS)
    phi = np.eye(K, dtype=np.float32)[labels]
    per_prompt = ur.sweep(phi @ psi.T, ur.make_units(None, quality=quality, costs=costs), costs, LAMS)
    np.testing.assert_allclose(np.asarray(per_cluster.mean_cost), np.asarray(per_prompt.mean_cost), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(per_cluster.mean_quality), np.asarray(per_prompt.mean_quality), atol=1e-6)


@given(labels_st, psi_st, costs_st, mask_st)
def test_monotone_in_lambda(labels, psi, costs, mask):
    units = ur.make_units(labels, n_units=K, costs=costs)
    lams = np.linspace(0, 20, 64).astype(np.float32)
    res = ur.sweep(psi.T, units, costs, lams, pool_masks=mask[None])
    cost, err = np.asarray(res.mean_cost[0]), np.asarray(res.mean_error_estimate[0])
    assert np.all(np.diff(cost) <= 1e-6)
    assert np.all(np.diff(err) >= -1e-6)


@given(labels_st, psi_st, costs_st, st.permutations(range(M)), st.sampled_from(list(LAMS)))
def test_permuting_models_permutes_choices(labels, psi, costs, perm, lam):
    perm = np.array(perm)
    costs = costs + np.arange(M, dtype=np.float32) * 1e-3  # distinct costs: no index tie-break
    phi = np.eye(K, dtype=np.float32)[labels]
    a = np.asarray(ur.route(phi, psi, costs, lam).choice)
    b = np.asarray(ur.route(phi, psi[perm], costs[perm], lam).choice)
    np.testing.assert_array_equal(perm[b], a)


@given(labels_st, psi_st, costs_st, st.sampled_from(list(LAMS)))
def test_dominated_model_changes_nothing(labels, psi, costs, lam):
    phi = np.eye(K, dtype=np.float32)[labels]
    worse = np.minimum(psi.max(0) + 0.05, 1.0)[None]
    a = np.asarray(ur.route(phi, psi, costs, lam).choice)
    b = np.asarray(ur.route(phi, np.concatenate([psi, worse]), np.append(costs, costs.max() + 1), lam).choice)
    np.testing.assert_array_equal(a, b)


def test_one_cluster_sends_everything_to_one_model():
    psi = np.array([[0.3], [0.1], [0.5]], np.float32)
    costs = np.array([1.0, 2.0, 0.5], np.float32)
    for lam in LAMS:
        choice = np.asarray(ur.route(np.ones((N, 1), np.float32), psi, costs, lam).choice)
        assert len(set(choice.tolist())) == 1


def test_lambda_zero_picks_lowest_error_and_ties_go_cheaper():
    psi = np.array([[0.2, 0.5], [0.2, 0.1], [0.4, 0.1]], np.float32)
    costs = np.array([3.0, 1.0, 2.0], np.float32)
    choice = np.asarray(ur.route(np.eye(2, dtype=np.float32), psi, costs, 0.0).choice)
    np.testing.assert_array_equal(choice, [1, 1])  # cluster 0: 0 and 1 tie, 1 is cheaper


def test_padded_pool_equals_unpadded_and_vmap_equals_loop():
    rng = np.random.default_rng(0)
    psi = rng.uniform(size=(M, K)).astype(np.float32)
    costs = rng.uniform(0.1, 1, M).astype(np.float32)
    phi = jnp.asarray(rng.dirichlet(np.ones(K), N).astype(np.float32))
    lam = jnp.asarray(0.3)
    plain = route_kernel(phi, jnp.asarray(psi), jnp.asarray(costs), jnp.ones(M, bool), lam)
    pad_psi = np.concatenate([psi, np.zeros((3, K), np.float32)])  # padding would win if unmasked
    pad_costs = np.concatenate([costs, np.zeros(3, np.float32)])
    padded = route_kernel(phi, jnp.asarray(pad_psi), jnp.asarray(pad_costs),
                          jnp.asarray([True] * M + [False] * 3), lam)
    np.testing.assert_array_equal(np.asarray(plain.choice), np.asarray(padded.choice))
    masks = jnp.asarray(rng.random((5, M)) < 0.6).at[:, 0].set(True)
    batched = jax.vmap(lambda m: route_kernel(phi, jnp.asarray(psi), jnp.asarray(costs), m, lam).choice)(masks)
    for i in range(5):
        np.testing.assert_array_equal(
            np.asarray(batched[i]), np.asarray(route_kernel(phi, jnp.asarray(psi), jnp.asarray(costs), masks[i], lam).choice))


def test_empty_pool_is_flagged_in_the_kernel():
    res = route_kernel(jnp.eye(2), jnp.zeros((3, 2)), jnp.ones(3), jnp.zeros(3, bool), jnp.asarray(0.0))
    assert not bool(res.feasible)
    assert np.all(np.asarray(res.choice) == -1)


def test_sweep_eager_equals_jit_and_no_retrace():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, K, N)
    costs = rng.uniform(0.1, 1, M).astype(np.float32)
    units = ur.make_units(labels, n_units=K, quality=rng.integers(0, 2, (N, M)).astype(np.float32), costs=costs)
    est = jnp.asarray(rng.uniform(size=(K, M)).astype(np.float32))
    masks = jnp.asarray([[True, True, False, True], [False, True, True, False]])
    args = (est, units, jnp.asarray(costs), masks, jnp.asarray(LAMS))
    jitted = sweep_kernel(*args, pool_batch=1)
    with jax.disable_jit():
        eager = sweep_kernel(*args, pool_batch=1)
    np.testing.assert_allclose(np.asarray(eager.mean_cost), np.asarray(jitted.mean_cost), rtol=1e-6)
    batched = sweep_kernel(*args, pool_batch=2)
    np.testing.assert_allclose(np.asarray(batched.mean_quality), np.asarray(jitted.mean_quality), rtol=1e-6)
    f = jax.jit(chex.assert_max_traces(n=1)(lambda e, m: sweep_kernel(e, units, jnp.asarray(costs), m,
                                                                        jnp.asarray(LAMS), pool_batch=1)))
    f(est, masks)
    f(est + 0.1, ~masks | jnp.eye(2, M, dtype=bool))


def test_lambda_grid_spans_all_decisions():
    costs = np.array([0.01, 0.02, 1.0], np.float32)
    lams = ur.lambda_grid(costs, 64)
    assert lams[0] == 0 and np.all(np.diff(lams) > 0)
    psi = np.array([[1.0], [0.5], [0.0]], np.float32)
    first = np.asarray(ur.route(np.ones((1, 1), np.float32), psi, costs, lams[0]).choice)[0]
    last = np.asarray(ur.route(np.ones((1, 1), np.float32), psi, costs, lams[-1]).choice)[0]
    assert (first, last) == (2, 0)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: ur.route(np.eye(2), np.full((2, 2), 0.5), [1, -1], 0.1), ValueError, "costs must be >= 0"),
    (lambda: ur.route(np.eye(2), np.full((2, 2), 0.5), [1, np.nan], 0.1), ValueError, "costs must be finite"),
    (lambda: ur.route(np.eye(2), np.full((2, 2), 0.5), [1, 1], -0.5), ValueError, "lam must be"),
    (lambda: ur.route(np.eye(2), np.full((2, 2), 0.5), [1, 1], 0.1, model_mask=[False, False]), ValueError,
     "pool is empty"),
    (lambda: ur.route(np.eye(3), np.full((2, 2), 0.5), [1, 1], 0.1), ValueError, "phi has shape"),
    (lambda: ur.route(np.eye(2), np.full((2, 2), 1.5), [1, 1], 0.1), ValueError, "psi must lie in"),
    (lambda: ur.sweep(np.zeros((2, 2)), ur.make_units([0, 1], n_units=2, costs=[1, 1]), [1, 1], [0.1],
                      pool_masks=[[False, False]]), ValueError, "pools are empty"),
    (lambda: ur.sweep(np.zeros((2, 2)), ur.make_units([0, 1], n_units=2, costs=[1, 1]), [1, 1], [-1.0]),
     ValueError, "lams must be >= 0"),
    (lambda: ur.make_units([0, 5], n_units=2, costs=[1, 1]), ValueError, "labels values must be in"),
    (lambda: ur.make_units([0, 1], n_units=2, quality=[[0, 2], [1, 1]], costs=[1, 1]), ValueError,
     "quality must lie in"),
])
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@given(labels_st, psi_st, costs_st, hnp.arrays(bool, (2, M)).filter(lambda m: m.any(axis=1).all()),
       hnp.arrays(np.float32, (N, M), elements=st.sampled_from([0.0, 1.0])))
def test_breakpoint_sweep_equals_direct_sweep(labels, psi, costs, masks, quality):
    units = ur.make_units(labels, n_units=K, quality=quality, costs=costs)
    # Budgets strictly between breakpoints: mid-points of a fine grid away from ties.
    lams = np.array([0.0, 0.013, 0.117, 0.71, 2.9, 47.0], np.float32)
    direct = ur.sweep(psi.T, units, costs, lams, pool_masks=masks)
    fast = ur.sweep(psi.T, units, costs, lams, pool_masks=masks, method="breakpoints")
    np.testing.assert_allclose(np.asarray(fast.mean_cost), np.asarray(direct.mean_cost), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(fast.mean_quality), np.asarray(direct.mean_quality), atol=1e-5)
