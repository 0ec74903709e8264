"""Tests for exact deferral curves and budget calibration."""

from __future__ import annotations

import doctest

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

import uniroute_jax as ur
from uniroute_jax._src import curves
from uniroute_jax._src.curves import (
    Calibration,
    ExactCurve,
    apply_calibration,
    calibrate,
    curve_at,
    curve_points,
    exact_curve,
    route_calibrated,
)
from uniroute_jax._src.routing import RoutingUnits

PROPERTY = settings(deadline=None, derandomize=True, database=None, max_examples=40)
# One shape for every property example, so one compile serves them all.
N_UNITS, MAX_MODELS, N_POOLS = 6, 5, 3


# ---------------------------------------------------------------------------------------------
# Plain NumPy reference twin, brute force in float64: every pairwise line intersection of every
# unit is a candidate breakpoint; the decision on each interval between consecutive candidates is
# the argmin at its midpoint; candidates where no unit's decision changes are dropped.
# ---------------------------------------------------------------------------------------------


def _np_choose(scores, costs, mask):
    s = np.where(mask, scores, np.inf)
    tied = (s <= s.min()) & mask
    cheapest = costs[tied].min()
    return int(np.flatnonzero(tied & (costs <= cheapest))[0])


def reference_curve(est, weight, quality_sums, cost_sums, costs, mask):
    """Valid points `(lam_start, cost, quality, error_estimate)` as `[n, 4]` float64."""
    est, costs = np.asarray(est, np.float64), np.asarray(costs, np.float64)
    weight = np.asarray(weight, np.float64)
    models = np.flatnonzero(mask)
    cand = {0.0}
    for u in range(est.shape[0]):
        for a in models:
            for b in models:
                if costs[a] > costs[b]:
                    t = (est[u, b] - est[u, a]) / (costs[a] - costs[b])
                    if t > 0:
                        cand.add(float(t))
    times = sorted(cand)
    total = weight.sum()
    points, last = [], None
    for i, t in enumerate(times):
        probe = 0.5 * (t + times[i + 1]) if i + 1 < len(times) else 2 * t + 1
        decision = [_np_choose(est[u] + probe * costs, costs, mask) for u in range(est.shape[0])]
        if decision == last:
            continue
        last = decision
        rows = np.arange(est.shape[0])
        points.append((t, np.sum(np.asarray(cost_sums, np.float64)[rows, decision]) / total,
                       np.sum(np.asarray(quality_sums, np.float64)[rows, decision]) / total,
                       np.sum(est[rows, decision] * weight) / total))
    return np.array(points)


def _valid_points(exact: ExactCurve, pool: int) -> np.ndarray:
    v = np.asarray(exact.valid[pool])
    return np.stack([np.asarray(x[pool])[v] for x in
                     (exact.lam_start, exact.mean_cost, exact.mean_quality, exact.mean_error_estimate)], axis=1)


def _probes(lams: np.ndarray, size: int = 256) -> np.ndarray:
    """Trade-offs strictly inside every interval between the breakpoints `lams` (sorted): three per
    interval, two past the last; padded to `size` by repeating the last (one shape, one compile)."""
    lams = np.asarray(lams, np.float64)
    inner = [lo + f * (hi - lo) for lo, hi in zip(lams[:-1], lams[1:]) for f in (0.1, 0.5, 0.9)]
    probes = np.array(inner + [1.5 * lams[-1] + 0.01, 10 * lams[-1] + 1.0])
    assert probes.size <= size
    return np.concatenate([probes, np.full(size - probes.size, probes[-1])])


# ---------------------------------------------------------------------------------------------
# Instances.
# ---------------------------------------------------------------------------------------------


@st.composite
def lattice_instances(draw):
    """Estimates on a 1/8 grid and costs on a 1/2 grid: many exact ties (equal costs, lines
    meeting at one point), all of which float arithmetic resolves exactly."""
    est = draw(hnp.arrays(np.int32, (N_UNITS, MAX_MODELS), elements=st.integers(0, 8))) / 8
    costs = draw(hnp.arrays(np.int32, (MAX_MODELS,), elements=st.integers(0, 6))) / 2
    weight = draw(hnp.arrays(np.int32, (N_UNITS,), elements=st.integers(0, 3)))
    weight[0] = max(weight[0], 1)
    correct = draw(hnp.arrays(np.int32, (N_UNITS, MAX_MODELS), elements=st.integers(0, 3)))
    quality_sums = np.minimum(correct, weight[:, None])
    realised = draw(st.booleans())
    factor = draw(hnp.arrays(np.int32, (N_UNITS, MAX_MODELS), elements=st.integers(1, 4))) if realised else 1
    cost_sums = costs[None, :] * weight[:, None] * factor
    masks = draw(hnp.arrays(np.bool_, (N_POOLS, MAX_MODELS)))
    masks[np.arange(N_POOLS), np.arange(N_POOLS) % MAX_MODELS] = True
    units = RoutingUnits(jnp.asarray(weight, jnp.float32), jnp.asarray(quality_sums, jnp.float32),
                         jnp.asarray(cost_sums, jnp.float32))
    return est.astype(np.float32), units, costs.astype(np.float32), masks, not realised


def _random_instance(seed, n_units=N_UNITS, max_models=MAX_MODELS, n_pools=N_POOLS, n_prompts=300):
    """Continuous estimates and costs: no exact ties. Default shapes match the property tests."""
    rng = np.random.default_rng(seed)
    costs = np.exp(rng.normal(size=max_models)).astype(np.float32)
    est = np.clip(0.4 - 0.1 * np.log(costs)[None] + 0.2 * rng.normal(size=(n_units, max_models)), 0, 1)
    labels = rng.integers(0, n_units, n_prompts)
    quality = (rng.uniform(size=(n_prompts, max_models)) > est[labels]).astype(np.float32)
    units = ur.make_units(labels, n_units=n_units, quality=quality, costs=costs)
    masks = rng.uniform(size=(n_pools, max_models)) < 0.7
    masks[:, 0] = True
    return est.astype(np.float32), units, costs, masks


# ---------------------------------------------------------------------------------------------
# Exact curve.
# ---------------------------------------------------------------------------------------------


@PROPERTY
@given(lattice_instances())
def test_matches_numpy_reference(instance):
    est, units, costs, masks, monotone = instance
    exact = exact_curve(est, units, costs, pool_masks=masks)
    n_slots = exact.lam_start.shape[1] - 1  # N_UNITS * max_steps, max_steps <= MAX_MODELS - 1
    assert exact.lam_start.shape[0] == N_POOLS and n_slots % N_UNITS == 0 and n_slots <= N_UNITS * (MAX_MODELS - 1)
    for p in range(N_POOLS):
        ref = reference_curve(est, units.weight, units.quality_sums, units.cost_sums, costs, masks[p])
        got = _valid_points(exact, p)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got[:, 0], ref[:, 0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[:, 1:], ref[:, 1:], rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(got[:, 0]) > 0)
        assert len(got) - 1 <= N_UNITS * (MAX_MODELS - 1)
        if monotone:  # realised costs are the decision costs: cost never rises with lam
            assert np.all(np.diff(got[:, 1]) <= 1e-6)
    # Between breakpoints the exact curve is what `routing.sweep` computes on a grid.
    probes = _probes(np.unique(np.concatenate([_valid_points(exact, p)[:, 0] for p in range(N_POOLS)])))
    grid = ur.sweep(est, units, costs, probes, pool_masks=masks)
    chex.assert_trees_all_close(curve_at(exact, probes), grid, rtol=1e-5, atol=1e-6)


def test_events_sized_by_the_longest_envelope():
    est, units, costs, masks = _random_instance(3, n_units=20, max_models=24, n_pools=6)
    # Independent count: a unit alone has one valid point per switch, plus lam = 0.
    switches = max(len(reference_curve(est[u:u + 1], units.weight[u:u + 1], units.quality_sums[u:u + 1],
                                       units.cost_sums[u:u + 1], costs, masks[p])) - 1
                   for p in range(6) for u in range(20))
    steps = int(curves.envelope_steps_kernel(jnp.asarray(est), jnp.asarray(costs), jnp.asarray(masks)))
    assert steps == switches and 1 < steps < 23
    full = curves.exact_curve_kernel(est, units, costs, masks)
    assert full.lam_start.shape == (6, 20 * 23 + 1)
    same = curves.exact_curve_kernel(est, units, costs, masks, max_steps=steps)
    short = curves.exact_curve_kernel(est, units, costs, masks, max_steps=steps - 1)
    for p in range(6):
        np.testing.assert_array_equal(_valid_points(same, p)[:, 0], _valid_points(full, p)[:, 0])
        np.testing.assert_allclose(_valid_points(same, p), _valid_points(full, p), rtol=1e-6, atol=1e-7)
    # One slot fewer than the longest envelope loses that unit's last switch.
    assert sum(len(_valid_points(short, p)) for p in range(6)) < sum(len(_valid_points(full, p)) for p in range(6))
    checked = exact_curve(est, units, costs, pool_masks=masks)  # sized by the measured steps
    cap = 1 << (steps - 1).bit_length()
    assert checked.lam_start.shape == (6, 20 * cap + 1)
    for p in range(6):
        np.testing.assert_allclose(_valid_points(checked, p), _valid_points(full, p), rtol=1e-6, atol=1e-7)


def test_envelope_steps_under_jit_vmap_and_pool_chunks():
    # Independent count per pool (as above); the kernel's maximum over pools, whether the pools run
    # in one vmap or in padded chunks (6 pools in chunks of 4: two pad with the first pool), under jit
    # and vmapped over instances.
    instances = [_random_instance(seed, n_units=12, max_models=10, n_pools=6) for seed in (4, 5)]
    per_pool = [[max(len(reference_curve(est[u:u + 1], units.weight[u:u + 1], units.quality_sums[u:u + 1],
                                         units.cost_sums[u:u + 1], costs, masks[p])) - 1 for u in range(12))
                 for p in range(6)] for est, units, costs, masks in instances]
    steps = jax.jit(curves.envelope_steps_kernel, static_argnames="pool_batch")
    for (est, _, costs, masks), counts in zip(instances, per_pool):
        args = (jnp.asarray(est), jnp.asarray(costs), jnp.asarray(masks))
        assert int(steps(*args)) == int(steps(*args, pool_batch=4)) == max(counts)
        for p in range(6):  # one pool alone: its own count, not the padding pool's
            assert int(steps(args[0], args[1], args[2][p:p + 1], pool_batch=4)) == counts[p]
    stacked = [jnp.stack([jnp.asarray(inst[i]) for inst in instances]) for i in (0, 2, 3)]
    got = jax.vmap(curves.envelope_steps_kernel)(*stacked)
    assert got.tolist() == [max(c) for c in per_pool]


def test_exact_curve_is_the_limit_of_dense_grids():
    est, units, costs, masks = _random_instance(0)
    exact = exact_curve(est, units, costs, pool_masks=masks)
    points = [_valid_points(exact, p) for p in range(N_POOLS)]
    # Probes inside every segment of every pool: the sweep there is the exact curve.
    probes = _probes(np.unique(np.concatenate([pts[:, 0] for pts in points])))
    chex.assert_trees_all_close(curve_at(exact, probes), ur.sweep(est, units, costs, probes, pool_masks=masks),
                                rtol=1e-5, atol=1e-6)
    for pts in points:
        assert np.all(np.diff(pts[:, 1]) <= 1e-6)
        assert np.all(np.diff(pts[:, 0]) > 0)
    # On ever denser lambda grids, every grid value is one of the exact points, and the curve
    # evaluated at the grid equals the sweep except within float rounding of a breakpoint.
    hit = []
    for n in (16, 256, 4096):
        lams = ur.lambda_grid(costs, n)
        grid = ur.sweep(est, units, costs, lams, pool_masks=masks)
        at = curve_at(exact, lams)
        hit.append(0)
        for p, pts in enumerate(points):
            vals = np.stack([np.asarray(grid.mean_cost[p]), np.asarray(grid.mean_quality[p])], axis=1)
            dist = np.abs(vals[:, None, :] - pts[None, :, 1:3]).max(axis=2)
            assert dist.min(axis=1).max() < 1e-5
            hit[-1] += int(np.sum(dist.min(axis=0) < 1e-5))
            # lam = 0 is the first point's start by definition, not a float-rounded breakpoint.
            near = np.abs(lams[:, None] - pts[None, 1:, 0]).min(axis=1) <= 1e-5 * lams
            assert near.mean() < 0.01
            np.testing.assert_allclose(np.asarray(at.mean_cost[p])[~near], vals[~near, 0], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(np.asarray(at.mean_quality[p])[~near], vals[~near, 1], rtol=1e-5,
                                       atol=1e-6)
    # Denser grids find more of the exact points, and the densest finds them all here.
    assert hit[0] <= hit[1] <= hit[2] == sum(len(pts) for pts in points)


def test_padded_pool_equals_unpadded():
    est, units, costs, masks = _random_instance(1, max_models=3)
    rng = np.random.default_rng(7)
    garbage = MAX_MODELS - 3
    pad = lambda x: np.concatenate([np.asarray(x), rng.uniform(-5, 9, (N_UNITS, garbage))], axis=1)
    costs_p = np.concatenate([costs, np.array([0.0, 1e6], np.float32)])
    units_p = RoutingUnits(units.weight, jnp.asarray(pad(units.quality_sums), jnp.float32),
                           jnp.asarray(np.abs(pad(units.cost_sums)), jnp.float32))
    masks_p = np.concatenate([masks, np.zeros((N_POOLS, garbage), bool)], axis=1)
    plain = exact_curve(est, units, costs, pool_masks=masks)
    padded = exact_curve(pad(est), units_p, costs_p, pool_masks=masks_p)
    for p in range(N_POOLS):
        np.testing.assert_allclose(_valid_points(padded, p), _valid_points(plain, p), rtol=1e-6, atol=1e-7)


def test_vmapped_equals_looped_and_chunked():
    # `exact_curve` sizes its output by the problem's longest envelope, so curves of different
    # problems are compared by their valid points.
    same = lambda a, pa, b, pb: np.testing.assert_allclose(_valid_points(a, pa), _valid_points(b, pb), atol=1e-6)
    est, units, costs, masks = _random_instance(2)
    batched = exact_curve(est, units, costs, pool_masks=masks)
    for p in range(N_POOLS):
        same(batched, p, exact_curve(est, units, costs, pool_masks=masks[p:p + 1]), 0)
    # Callers vmap the kernel over trials; pool_batch=2 also runs the chunked path (two chunks,
    # one padded pool).
    est2 = np.stack([est, est[::-1]])
    trials = jax.vmap(lambda e: curves.exact_curve_kernel(e, units, jnp.asarray(costs), jnp.asarray(masks),
                                                          pool_batch=2))(est2)
    for t in range(2):
        single = exact_curve(est2[t], units, costs, pool_masks=masks)
        for p in range(N_POOLS):
            same(jax.tree.map(lambda x: x[t], trials), p, single, p)


@pytest.mark.slow  # eager mode compiles every primitive on first use: about 5 s of CPU
def test_eager_equals_jit_and_no_retrace():
    est, units, costs, masks = _random_instance(3)
    jitted = exact_curve(est, units, costs, pool_masks=masks)
    with jax.disable_jit():
        eager = exact_curve(est, units, costs, pool_masks=masks)
    chex.assert_trees_all_close(eager, jitted, atol=1e-6)
    before = curves.exact_curve_kernel._cache_size()
    exact_curve(est + 0.01, units, costs * 2, pool_masks=~masks | np.eye(N_POOLS, MAX_MODELS, dtype=bool))
    exact_curve(est.tolist(), units, costs.astype(np.float64), pool_masks=masks.astype(int))
    assert curves.exact_curve_kernel._cache_size() - before <= 1
    lams = jnp.linspace(0.0, 3.0, 7)
    traced = jax.jit(jax.vmap(chex.assert_max_traces(curves._curve_at_one, n=1), in_axes=(0, 0, 0, 0, 0, None)))
    for exact in (jitted, eager):
        traced(exact.lam_start, exact.mean_cost, exact.mean_quality, exact.mean_error_estimate, exact.feasible, lams)


def test_empty_pool_under_jit_is_flagged():
    est, units, costs, masks = _random_instance(4)
    masks[1] = False
    out = curves.exact_curve_kernel(jnp.asarray(est), units, jnp.asarray(costs), jnp.asarray(masks),
                                    pool_batch=N_POOLS)
    assert not bool(out.feasible[1]) and bool(out.feasible[0])
    assert not np.asarray(out.valid[1]).any()
    assert np.isnan(np.asarray(out.mean_cost[1])).all()


def test_float64_when_x64_enabled():
    est, units, costs, masks = _random_instance(5, n_pools=1)
    with jax.enable_x64(True):
        exact = exact_curve(est.astype(np.float64), units, costs, pool_masks=masks)
        assert exact.mean_cost.dtype == jnp.float64
        ref = reference_curve(est, units.weight, units.quality_sums, units.cost_sums, costs, masks[0])
        np.testing.assert_allclose(_valid_points(exact, 0), ref, rtol=1e-12, atol=1e-12)


def test_curve_points_feed_the_metrics():
    from uniroute_jax._src import metrics

    est, units, costs, masks = _random_instance(6)
    exact = exact_curve(est, units, costs, pool_masks=masks)
    pts = curve_points(exact)
    valid = np.asarray(pts.valid)
    np.testing.assert_array_equal(valid, np.asarray(exact.valid))
    assert np.all(np.asarray(pts.cost)[~valid] == 0) and np.all(np.asarray(pts.quality)[~valid] == 0)
    v = valid[0]
    whole = metrics.area(pts.cost[0], pts.quality[0], pts.valid[0], float(costs.max()))
    kept = metrics.area(np.asarray(pts.cost[0])[v], np.asarray(pts.quality[0])[v], v[v], float(costs.max()))
    assert float(whole) == pytest.approx(float(kept), abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Calibration.
# ---------------------------------------------------------------------------------------------


@PROPERTY
@given(lattice_instances(), st.floats(0.0, 1.0))
def test_calibration_meets_the_budget_exactly(instance, frac):
    est, units, costs, masks, _ = instance
    exact = exact_curve(est, units, costs, pool_masks=masks)
    pts = [_valid_points(exact, p) for p in range(N_POOLS)]
    lo = np.array([p[:, 1].min() for p in pts])
    hi = np.array([p[:, 1].max() for p in pts])
    budget = lo + frac * (hi - lo)
    cal = calibrate(exact, cost=budget)
    assert np.all(np.asarray(cal.feasible))
    np.testing.assert_allclose(np.asarray(cal.achieved_cost), budget, rtol=1e-5, atol=1e-6)
    p_high = np.asarray(cal.p_high)
    assert np.all((p_high >= 0) & (p_high <= 1))
    cost = np.asarray(exact.mean_cost)
    rows = np.arange(N_POOLS)
    c_hi, c_lo = cost[rows, np.asarray(cal.point_high)], cost[rows, np.asarray(cal.point_low)]
    assert np.all(np.asarray(exact.valid)[rows, np.asarray(cal.point_high)])
    assert np.all(np.asarray(exact.valid)[rows, np.asarray(cal.point_low)])
    assert np.all((c_hi >= budget - 1e-6) | (np.asarray(cal.point_high) == 0))
    assert np.all(c_lo <= budget + 1e-6)
    assert np.all(np.asarray(cal.lam_high_cost) <= np.asarray(cal.lam_low_cost))
    # The returned trade-offs reproduce the two points on the calibration set ...
    at_hi = curve_at(exact, cal.lam_high_cost)
    at_lo = curve_at(exact, cal.lam_low_cost)
    np.testing.assert_allclose(np.diagonal(np.asarray(at_hi.mean_cost)), c_hi, rtol=1e-6)
    np.testing.assert_allclose(np.diagonal(np.asarray(at_lo.mean_cost)), c_lo, rtol=1e-6)
    # ... and so does routing with them, so the expectation over the mix is the budget again.
    again = apply_calibration(cal, est, units, costs, pool_masks=masks)
    np.testing.assert_allclose(np.asarray(again.mean_cost), budget, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(again.mean_quality), np.asarray(cal.achieved_quality), rtol=1e-5,
                               atol=1e-6)
    assert again.sampled_cost is None


@PROPERTY
@given(lattice_instances(), st.floats(0.0, 1.0))
def test_calibration_meets_a_quality_target(instance, frac):
    est, units, costs, masks, _ = instance
    exact = exact_curve(est, units, costs, pool_masks=masks)
    pts = [_valid_points(exact, p) for p in range(N_POOLS)]
    top = np.array([p[:, 2].max() for p in pts])
    target = np.clip(frac * top, 0, 1)
    cal = calibrate(exact, quality=target)
    assert np.all(np.asarray(cal.feasible))
    achieved = np.asarray(cal.achieved_quality)
    # Exactly the target, unless even the cheapest end of the curve exceeds it (then p = 1 there).
    last = np.array([np.flatnonzero(np.asarray(exact.valid[p]))[-1] for p in range(N_POOLS)])
    at_last = np.asarray(cal.point_high) == last
    np.testing.assert_allclose(achieved[~at_last], target[~at_last], rtol=1e-5, atol=1e-6)
    assert np.all(achieved[at_last] >= target[at_last] - 1e-6)


def test_calibration_edges_and_infeasible_budgets():
    est, units, costs, masks = _random_instance(8)
    exact = exact_curve(est, units, costs, pool_masks=masks)
    pts = [_valid_points(exact, p) for p in range(len(masks))]
    cheapest = np.array([p[:, 1].min() for p in pts])
    dearest = np.array([p[:, 1].max() for p in pts])
    below = calibrate(exact, cost=0.5 * cheapest)
    assert not np.asarray(below.feasible).any()
    np.testing.assert_allclose(np.asarray(below.achieved_cost), cheapest, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(below.p_high), 1.0)
    np.testing.assert_array_equal(np.asarray(below.point_high), np.asarray(below.point_low))
    above = calibrate(exact, cost=2 * dearest)
    assert np.asarray(above.feasible).all()
    np.testing.assert_array_equal(np.asarray(above.point_high), 0)
    np.testing.assert_array_equal(np.asarray(above.point_low), 0)
    np.testing.assert_array_equal(np.asarray(above.p_high), 1.0)
    np.testing.assert_allclose(np.asarray(above.achieved_cost), dearest, rtol=1e-6)
    best = np.array([p[:, 2].max() for p in pts])
    unreachable = calibrate(exact, quality=np.minimum(best + 0.01, 1.0))
    assert not np.asarray(unreachable.feasible).any()
    np.testing.assert_allclose(np.asarray(unreachable.achieved_quality), best, rtol=1e-6)


def test_route_calibrated_and_sampled_outcomes():
    est, units, costs, masks = _random_instance(9)
    exact = exact_curve(est, units, costs, pool_masks=masks)
    lo = np.array([_valid_points(exact, p)[:, 1].min() for p in range(N_POOLS)])
    hi = np.array([_valid_points(exact, p)[:, 1].max() for p in range(N_POOLS)])
    cal = calibrate(exact, cost=0.5 * (lo + hi))
    n = 4000
    labels = np.random.default_rng(0).integers(0, N_UNITS, n)
    routed = route_calibrated(cal, est[labels], costs, jax.random.key(0), pool_masks=masks)
    per_prompt = ur.make_units(None, quality=np.zeros((n, MAX_MODELS)), costs=costs)
    res = apply_calibration(cal, est[labels], per_prompt, costs, jax.random.key(1), pool_masks=masks)
    for p in range(N_POOLS):
        p_high = float(cal.p_high[p])
        high = np.asarray(routed.high[p])
        assert abs(high.mean() - p_high) <= 5 * np.sqrt(p_high * (1 - p_high) / n) + 1e-9
        decide = lambda lam: np.array([_np_choose(est[u] + lam * costs, costs, masks[p]) for u in labels])
        want_hi, want_lo = decide(float(cal.lam_high_cost[p])), decide(float(cal.lam_low_cost[p]))
        np.testing.assert_array_equal(np.asarray(routed.choice[p]), np.where(high, want_hi, want_lo))
        # The expectation is exact; one per-prompt draw scatters around it by its binomial spread.
        gap = costs[want_hi] - costs[want_lo]
        expected = np.mean(p_high * costs[want_hi] + (1 - p_high) * costs[want_lo])
        assert float(res.mean_cost[p]) == pytest.approx(expected, rel=1e-5)
        spread = np.sqrt(p_high * (1 - p_high) * np.sum(gap**2)) / n
        assert abs(float(res.sampled_cost[p]) - expected) <= 5 * spread + 1e-6


@pytest.mark.slow  # drawing the synthetic world compiles for about 5 s of CPU
def test_budget_holds_on_held_out_prompts():
    # Hard clusters on the true components; estimates from 2,000 validation prompts, calibration
    # on 4,000, evaluation on 24,000 held-out prompts. The held-out cost differs from the budget
    # only through the held-out cluster proportions: within 5% relative here (at most 2% seen on
    # 4 seeds).
    world = ur.synthetic_world(0, n_prompts=30000, n_models=12)
    z, q, costs = np.asarray(world.prompts.components), np.asarray(world.quality), np.asarray(world.llms.costs)
    n_clusters = int(z.max()) + 1
    val, cal_set, held = slice(0, 2000), slice(2000, 6000), slice(6000, None)
    est = np.stack([1 - q[val][z[val] == k].mean(axis=0) for k in range(n_clusters)]).astype(np.float32)
    cal_units = ur.make_units(z[cal_set], n_units=n_clusters, quality=q[cal_set], costs=costs)
    held_units = ur.make_units(z[held], n_units=n_clusters, quality=q[held], costs=costs)
    exact = exact_curve(est, cal_units, costs)
    pts = _valid_points(exact, 0)
    budgets = np.quantile(pts[:, 1], [0.25, 0.5, 0.75])
    for budget in budgets:
        cal = calibrate(exact, cost=budget)
        assert float(cal.achieved_cost[0]) == pytest.approx(budget, rel=1e-5)
        res = apply_calibration(cal, est, held_units, costs, jax.random.key(0))
        assert float(res.mean_cost[0]) == pytest.approx(budget, rel=0.05)
        assert float(res.mean_quality[0]) == pytest.approx(float(cal.achieved_quality[0]), abs=0.02)


# ---------------------------------------------------------------------------------------------
# Input validation and docs.
# ---------------------------------------------------------------------------------------------


def test_input_validation():
    est, units, costs, masks = _random_instance(10)
    with pytest.raises(ValueError, match="estimates must have shape"):
        exact_curve(est[:, :2], units, costs)
    with pytest.raises(ValueError, match="costs must be >= 0"):
        exact_curve(est, units, -costs)
    with pytest.raises(ValueError, match="estimates must be finite"):
        exact_curve(np.full_like(est, np.nan), units, costs)
    with pytest.raises(TypeError, match="units must be a RoutingUnits"):
        exact_curve(est, (units.weight, units.quality_sums), costs)
    with pytest.raises(ValueError, match="units.weight must have shape"):
        exact_curve(est, units._replace(weight=units.weight[:2]), costs)
    with pytest.raises(ValueError, match=r"pool_masks rows \[1\] select no model"):
        exact_curve(est, units, costs, pool_masks=np.eye(2, MAX_MODELS, dtype=bool) & [[True], [False]])
    with pytest.raises(TypeError, match="pool_masks must be a boolean mask"):
        exact_curve(est, units, costs, pool_masks=np.full((1, MAX_MODELS), 0.5))
    exact = exact_curve(est, units, costs, pool_masks=masks)
    with pytest.raises(TypeError, match="exact must be an ExactCurve"):
        calibrate(tuple(exact), cost=0.1)
    with pytest.raises(ValueError, match="exactly one of cost= or quality=, got neither"):
        calibrate(exact)
    with pytest.raises(ValueError, match="got both"):
        calibrate(exact, cost=0.1, quality=0.5)
    with pytest.raises(ValueError, match=r"cost must be a scalar or have shape \(3,\)"):
        calibrate(exact, cost=[0.1, 0.2])
    with pytest.raises(ValueError, match="cost must be >= 0"):
        calibrate(exact, cost=-1.0)
    with pytest.raises(ValueError, match=r"quality must lie in \[0, 1\]"):
        calibrate(exact, quality=1.5)
    with pytest.raises(ValueError, match="lams must be >= 0"):
        curve_at(exact, [-1.0])
    cal = calibrate(exact, cost=0.1)
    with pytest.raises(ValueError, match=r"calibration.lam_high_cost must have shape \(2,\)"):
        apply_calibration(cal, est, units, costs, pool_masks=np.ones((2, MAX_MODELS), bool))
    with pytest.raises(TypeError, match="calibration must be a Calibration"):
        apply_calibration(tuple(cal), est, units, costs)
    with pytest.raises(TypeError, match="key must be a JAX PRNG key"):
        route_calibrated(cal, est, costs, 0, pool_masks=masks)
    with pytest.raises(ValueError, match="costs must have shape"):
        route_calibrated(cal, est, costs[:2], jax.random.key(0), pool_masks=masks)
    assert isinstance(cal, Calibration)


def test_docstring_examples():
    failures, _ = doctest.testmod(curves)
    assert failures == 0
