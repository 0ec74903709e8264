"""Proposition 1: the Bayes router against an exact LP solution and brute force (theory.bayes)."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import uniroute_jax as ur
from theory import bayes

PROFILE = settings(deadline=None, derandomize=True, database=None, max_examples=25)
LAMS = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 47)]).astype(np.float32)

probs = lambda shape: hnp.arrays(np.float64, shape, elements=st.floats(0.0, 1.0, width=32))  # noqa: E731
# Distinct entries: no constant error matrix, no tied slopes (shrinking drives plain arrays to zeros).
distinct_probs = lambda shape: hnp.arrays(  # noqa: E731
    np.float64, shape, elements=st.floats(0.0, 1.0, width=32), unique=True)
costs_st = lambda n: hnp.arrays(  # noqa: E731
    np.float64, (n,), elements=st.floats(0.015625, 1.0, width=32), unique=True)


def _np_scores(scores, costs, mask, lam):
    """Exact (float64) Lagrangian scores, +inf outside the pool."""
    return np.where(mask, scores.astype(np.float64) + lam * costs.astype(np.float64), np.inf)


# ------------------------------------------------------------------------------ exact LP


@PROFILE
@given(p=distinct_probs((4, 3)), c=costs_st(3))
def test_exact_frontier_matches_brute_force_over_all_81_routers(p, c):
    fr = bayes.exact_frontier(p, c)
    rc, re = bayes.deterministic_routers(p, c)
    budgets = np.linspace(rc.min(), rc.max() + 0.1, 41)
    np.testing.assert_allclose(bayes.frontier_error(fr, budgets), bayes.best_mixture_error(rc, re, budgets),
                               atol=1e-12)


@PROFILE
@given(p=distinct_probs((4, 3)), c=costs_st(3), lam_i=st.integers(1, len(LAMS) - 1))
def test_bayes_router_is_never_beaten(p, c, lam_i):
    lam = LAMS[lam_i]
    choice = np.asarray(bayes.bayes_choices(jnp.asarray(p, jnp.float32), jnp.asarray(c, jnp.float32),
                                            jnp.ones(3, bool), jnp.asarray([lam])))[0]
    rows = np.arange(4)
    b_cost, b_err = c[choice].mean(), p[rows, choice].mean()
    rc, re = bayes.deterministic_routers(p, c)
    # Lagrangian risk: no deterministic router (hence no mixture) does better at this lambda.
    assert b_err + lam * b_cost <= (re + lam * rc).min() + 1e-6
    # Constrained problem: no mixture of routers reaches lower error at the Bayes router's cost.
    assert b_err <= bayes.best_mixture_error(rc, re, [b_cost])[0] + 1e-6


def test_check_proposition1_with_dynamic_pools():
    rng = np.random.default_rng(0)
    n_pools, n_prompts, n_models = 3, 40, 6
    p = rng.uniform(size=(n_pools * n_prompts, n_models))
    c = rng.uniform(0.01, 1.0, size=n_models)
    pools = rng.uniform(size=(n_pools, n_models)) < 0.6
    pools[:, 0] = True
    mask = np.repeat(pools, n_prompts, axis=0)
    chk = bayes.check_proposition1(p, c, mask, LAMS)
    assert np.abs(chk.frontier_gap).max() < 1e-6
    assert np.abs(chk.dual_gap).max() < 1e-6
    # Sharing one lambda across pools is at least as good as splitting the budget per pool.
    joint = bayes.exact_frontier(p, c, mask)
    per_pool = [bayes.exact_frontier(p[i * n_prompts:(i + 1) * n_prompts], c, pools[i]) for i in range(n_pools)]
    grid = np.linspace(max(f.cost[0] for f in per_pool), max(f.cost[-1] for f in per_pool), 30)
    split = np.mean([bayes.frontier_error(f, grid) for f in per_pool], axis=0)
    assert np.all(bayes.frontier_error(joint, grid) <= split + 1e-12)


def test_frontier_edges_and_errors():
    p = np.array([[0.5, 0.1], [0.4, 0.3]])
    fr = bayes.exact_frontier(p, np.array([0.1, 1.0]))
    assert bayes.frontier_error(fr, 0.05) == np.inf
    assert bayes.frontier_error(fr, 0.1) == pytest.approx(0.45)
    assert bayes.frontier_error(fr, 5.0) == pytest.approx(0.2)
    np.testing.assert_allclose(bayes.frontier_dual(fr, np.array([0.0])), [0.2])
    with pytest.raises(ValueError, match="at least one allowed model"):
        bayes.exact_frontier(p, np.array([0.1, 1.0]), np.array([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="too many"):
        bayes.deterministic_routers(np.zeros((20, 3)), np.ones(3))


def test_lower_hull_keeps_only_efficient_vertices():
    fr = bayes.lower_hull([0.0, 0.5, 1.0, 0.6, 0.3], [1.0, 0.9, 0.0, 0.5, 0.8])
    np.testing.assert_allclose(fr.cost, [0.0, 1.0])
    np.testing.assert_allclose(fr.error, [1.0, 0.0])


# ------------------------------------------------------------------------------ routing kernel


@PROFILE
@given(scores=probs((6, 4)), c=costs_st(4), mask=hnp.arrays(bool, (4,)), lam_i=st.integers(0, len(LAMS) - 1))
def test_lagrangian_choice_matches_numpy_twin(scores, c, mask, lam_i):
    lam = float(LAMS[lam_i])
    got = np.asarray(_choice_jit(jnp.asarray(scores, jnp.float32), jnp.asarray(c, jnp.float32), jnp.asarray(mask),
                                 jnp.asarray(lam, jnp.float32)))
    exact = _np_scores(scores, c, mask, lam)
    if not mask.any():
        assert np.all(got == -1)
        return
    best = exact.min(axis=1)
    # float32 picks a model within rounding of the exact minimum ...
    assert np.all(exact[np.arange(len(got)), got] <= best + 1e-5 * (1 + lam))
    # ... and the exact argmin wherever that is clear of the runner-up.
    second = np.sort(exact, axis=1)[:, 1] if mask.sum() > 1 else np.full(len(got), np.inf)
    clear = second - best > 1e-4 * (1 + lam)
    np.testing.assert_array_equal(got[clear], exact.argmin(axis=1)[clear])


_choice_jit = jax.jit(bayes.lagrangian_choice)


def test_lagrangian_choice_agrees_with_library_route_and_breaks_ties_to_cheaper():
    rng = np.random.default_rng(1)
    psi = rng.uniform(size=(5, 3)).astype(np.float32)  # [max_models, n_clusters]
    c = np.array([0.5, 0.1, 0.9, 0.3, 0.7], np.float32)
    mask = np.array([True, True, False, True, True])
    for lam in (0.0, 0.3, 2.0):
        lib = np.asarray(ur.route(np.eye(3, dtype=np.float32), psi, c, lam, model_mask=mask).choice)
        ours = np.asarray(bayes.lagrangian_choice(jnp.asarray(psi.T), jnp.asarray(c), jnp.asarray(mask), lam))
        np.testing.assert_array_equal(ours, lib)
    tied = jnp.zeros((1, 5))
    assert int(bayes.lagrangian_choice(tied, jnp.asarray(c), jnp.asarray(mask), 0.0)[0]) == 1
    assert int(bayes.lagrangian_choice(tied, jnp.asarray(c), jnp.zeros(5, bool), 0.0)[0]) == -1


def test_bayes_choices_jit_vmap_and_no_retrace():
    rng = np.random.default_rng(2)
    p = jnp.asarray(rng.uniform(size=(7, 4)), jnp.float32)
    c = jnp.asarray(rng.uniform(0.1, 1, size=4), jnp.float32)
    m = jnp.array([True, True, False, True])
    lams = jnp.asarray(LAMS[:5])
    looped = np.stack([np.asarray(bayes.bayes_choice(p, c, m, lam)) for lam in lams])
    np.testing.assert_array_equal(np.asarray(bayes.bayes_choices(p, c, m, lams)), looped)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(p, c, m, lam):
        return bayes.lagrangian_choice(p, c, m, lam)

    np.testing.assert_array_equal(np.asarray(f(p, c, m, lams[2])), looped[2])
    f(p + 0.1, c, m, lams[3])


@PROFILE
@given(scores=probs((8, 5)), c=costs_st(5), mask=hnp.arrays(bool, (5,)))
def test_mean_cost_is_non_increasing_in_lambda(scores, c, mask):
    mask = mask.copy()
    mask[0] = True
    choices = np.asarray(bayes.bayes_choices(jnp.asarray(scores, jnp.float32), jnp.asarray(c, jnp.float32),
                                             jnp.asarray(mask), jnp.asarray(LAMS)))
    per_unit = c[choices]  # [n_lams, n_units]: monotone per unit, hence on average
    assert np.all(np.diff(per_unit, axis=0) <= 1e-12)


@PROFILE
@given(p=probs((6, 5)), c=costs_st(5), perm_i=st.integers(0, 119), lam_i=st.integers(0, len(LAMS) - 1))
def test_bayes_router_is_permutation_equivariant(p, c, perm_i, lam_i):
    perm = np.array(list(itertools.permutations(range(5)))[perm_i])
    lam = LAMS[lam_i]
    mask = np.array([True, True, True, False, True])
    base = np.asarray(_choice_jit(jnp.asarray(p, jnp.float32), jnp.asarray(c, jnp.float32), jnp.asarray(mask),
                                  jnp.asarray(lam)))
    permuted = np.asarray(_choice_jit(jnp.asarray(p[:, perm], jnp.float32), jnp.asarray(c[perm], jnp.float32),
                                      jnp.asarray(mask[perm]), jnp.asarray(lam)))
    # Costs are distinct, so the (score, cost) tie rule names the same model in any order.
    np.testing.assert_array_equal(perm[permuted], base)


@PROFILE
@given(p=probs((6, 4)), c=costs_st(4), extra=probs((6,)), gap=st.floats(1e-3, 1.0), d=st.integers(0, 3),
       lam_i=st.integers(0, len(LAMS) - 1))
def test_dominated_llm_never_changes_a_decision(p, c, extra, gap, d, lam_i):
    # The new model (put first, where index tie-breaking would favour it) errs at least as often as
    # model d on every prompt and costs more.
    lam = LAMS[lam_i]
    p_new = np.minimum(p[:, d] + extra * (1.0 - p[:, d]), 1.0)
    p5 = np.concatenate([p_new[:, None], p], axis=1)
    c5 = np.concatenate([[c[d] + gap], c])
    m4, m5 = jnp.ones(4, bool), jnp.ones(5, bool)
    before = np.asarray(_choice_jit(jnp.asarray(p, jnp.float32), jnp.asarray(c, jnp.float32), m4, jnp.asarray(lam)))
    after = np.asarray(_choice_jit(jnp.asarray(p5, jnp.float32), jnp.asarray(c5, jnp.float32), m5, jnp.asarray(lam)))
    np.testing.assert_array_equal(after, before + 1)


# ------------------------------------------------------------------ against a general LP solver


def _random_routing_lp(seed: int, n_units: int = 24, n_models: int = 6):
    """A non-degenerate instance: distinct error probabilities and costs, random pools (every unit
    keeps at least two models) and random unit weights (a few zero)."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.02, 0.98, size=(n_units, n_models))
    c = np.sort(rng.uniform(0.05, 1.0, size=n_models))[rng.permutation(n_models)]
    mask = rng.uniform(size=(n_units, n_models)) < 0.7
    for u in range(n_units):
        mask[u, rng.choice(n_models, 2, replace=False)] = True
    w = rng.uniform(0.2, 2.0, size=n_units) * (rng.uniform(size=n_units) > 0.1)
    return p, c, mask, w


def _linprog_routing(p, c, mask, w, budget):
    """min sum_u w_u sum_h q_uh p_uh  s.t.  sum_u w_u sum_h q_uh c_h <= B,  sum_h q_uh = 1,
    q_uh >= 0 and q_uh = 0 outside the unit's pool: solved by HiGHS with no knowledge of lambda."""
    from scipy.optimize import linprog

    n_units, n_models = p.shape
    wn = w / w.sum()
    res = linprog((wn[:, None] * p).ravel(), A_ub=(wn[:, None] * np.broadcast_to(c, p.shape)).ravel()[None, :],
                  b_ub=[budget], A_eq=np.kron(np.eye(n_units), np.ones((1, n_models))), b_eq=np.ones(n_units),
                  bounds=[(0.0, None) if ok else (0.0, 0.0) for ok in mask.ravel()], method="highs")
    return res


@pytest.mark.parametrize("seed", range(4))
def test_exact_frontier_and_bayes_router_match_highs_at_fixed_budgets(seed):
    pytest.importorskip("scipy")
    p, c, mask, w = _random_routing_lp(seed)
    cm = np.where(mask, c, np.inf)
    wn = w / w.sum()
    least = wn @ cm.min(axis=1)
    most = wn @ c[np.argmin(np.where(mask, p, np.inf), axis=1)]
    frontier = bayes.exact_frontier(p, c, mask, w)
    # Budgets fixed in advance (not produced by any lambda sweep), from just affordable to slack.
    for budget in least + np.array([0.02, 0.13, 0.31, 0.5, 0.77, 0.95, 1.2]) * (most - least):
        res = _linprog_routing(p, c, mask, w, budget)
        assert res.status == 0, res.message
        # The greedy-by-slope frontier is the LP optimum.
        assert bayes.frontier_error(frontier, budget) == pytest.approx(res.fun, abs=1e-9)
        # Proposition 1: at the LP's own dual price lambda* of the budget, the Bayes router
        # argmin_h p + lambda* c attains the LP value in the Lagrangian (strong duality with one
        # lambda for every unit and pool) ...
        lam = -float(res.ineqlin.marginals[0])
        assert lam >= -1e-12
        choice = np.asarray(bayes.bayes_choices(jnp.asarray(p, jnp.float32), jnp.asarray(c, jnp.float32),
                                                jnp.asarray(mask), jnp.asarray([lam], jnp.float32)))[0]
        rows = np.arange(p.shape[0])
        assert np.all(mask[rows, choice])
        lagrangian = wn @ (p[rows, choice] + lam * c[choice])
        assert lagrangian - lam * budget == pytest.approx(res.fun, abs=2e-6 * (1 + lam))
        # ... and mixing its decisions just below and just above lambda* meets the budget with
        # the LP's error.
        lo, hi = (np.asarray(bayes.bayes_choices(jnp.asarray(p, jnp.float32), jnp.asarray(c, jnp.float32),
                                                 jnp.asarray(mask), jnp.asarray([x], jnp.float32)))[0]
                  for x in (lam * (1 - 1e-4), lam * (1 + 1e-4) + 1e-7))
        c_lo, c_hi = wn @ c[lo], wn @ c[hi]
        e_lo, e_hi = wn @ p[rows, lo], wn @ p[rows, hi]
        assert c_hi <= budget + 1e-9
        if c_lo <= budget + 1e-12:  # the budget does not bind
            assert e_lo == pytest.approx(res.fun, abs=1e-6)
        else:
            theta = (c_lo - budget) / (c_lo - c_hi)
            assert (1 - theta) * e_lo + theta * e_hi == pytest.approx(res.fun, abs=1e-6)


def test_highs_agrees_that_no_budget_below_the_cheapest_routing_is_feasible():
    pytest.importorskip("scipy")
    p, c, mask, w = _random_routing_lp(7)
    least = (w / w.sum()) @ np.where(mask, c, np.inf).min(axis=1)
    assert _linprog_routing(p, c, mask, w, least - 1e-3).status == 2  # infeasible
    assert bayes.frontier_error(bayes.exact_frontier(p, c, mask, w), least - 1e-3) == np.inf


def test_check_proposition1_measures_a_plug_in_router_against_the_lp_not_its_own_hull(monkeypatch):
    # Routed on noisy estimates of p, the swept router misses the frontier at budgets that no
    # Bayes sweep produces. Proposition 1's residuals must then be measured against the exact LP
    # (HiGHS here, and the Lagrangian minimum in NumPy), whatever router the sweep runs: a
    # reference built from the sweep's own points would call every one of them optimal.
    pytest.importorskip("scipy")
    p, c, mask, w = _random_routing_lp(11)
    p, c = p.astype(np.float32).astype(np.float64), c.astype(np.float32).astype(np.float64)  # exact in float32
    p_hat = np.clip(p + np.random.default_rng(12).normal(0.0, 0.15, p.shape), 0.0, 1.0)
    lams = np.asarray([0.0, 0.05, 0.2, 0.6, 2.0], np.float32)
    real = bayes.bayes_choices
    monkeypatch.setattr(bayes, "bayes_choices", lambda p_, c_, m_, lams_: real(jnp.asarray(p_hat, jnp.float32),
                                                                                 c_, m_, lams_))
    chk = bayes.check_proposition1(p, c, mask, lams, w)
    # The twin: the plug-in router's operating points in float64 ...
    choice = np.asarray(real(jnp.asarray(p_hat, jnp.float32), jnp.asarray(c, jnp.float32), jnp.asarray(mask),
                             jnp.asarray(lams)))
    wn, rows = w / w.sum(), np.arange(p.shape[0])
    cost, error = c[choice] @ wn, p[rows, choice] @ wn
    np.testing.assert_allclose(chk.sweep_cost, cost, rtol=1e-12)
    np.testing.assert_allclose(chk.sweep_error, error, rtol=1e-12)
    # ... the LP's least error at each of their costs, from HiGHS ...
    best = []
    for budget in cost:
        res = _linprog_routing(p, c, mask, w, budget)
        assert res.status == 0, res.message
        best.append(res.fun)
    np.testing.assert_allclose(chk.frontier_gap, error - np.array(best), atol=1e-8)
    # ... and the least Lagrangian risk, each unit on its own best model.
    lagrangian = np.where(mask, p[None] + lams[:, None, None].astype(np.float64) * c, np.inf).min(axis=2) @ wn
    np.testing.assert_allclose(chk.dual_gap, error + lams * cost - lagrangian, atol=1e-8)
    # The plug-in router is measurably off the frontier, so the check has something to find.
    assert chk.frontier_gap.max() > 1e-3 and chk.dual_gap.max() > 1e-3
